//! The CUDA path: `birdbone-cuda`'s kernels on the tensors' device memory. Work is batched: one
//! launch covers every parameter of a pass that shares an element type, score kind and rule, so
//! a 7B model is pruned in a handful of launches. Buffers come from libtorch's caching allocator
//! (so they follow its stream), and results are read back once, when first needed.
//!
//! This file stages what launches read (segment and chunk tables, uploads, read-backs); the
//! steps are modules: `band` (a global threshold by band selection), `global` (the global
//! selector), `select` (a threshold per parameter), `rows` (a threshold per row), `commit`
//! (rules applied in place, masks) and `checks` (finiteness, masks applied).

use std::sync::{Arc, OnceLock};

use birdbone_cuda::{Dt, Gpu, ScoreKind, Seg, Source, SEGW};
// The kernels' typed device pointers, for the step modules (`use super::*`).
use birdbone_cuda::{
    BadFlag, BadIndex, BandBin, BandChunks, BandHists, BandLo, BandStats, BandWidth, BelowBand,
    Bins, ChunkStarts, Chunks, CountsAt, CountsBelow, FirstBad, FirstSeg, HighBins, Hists, Ks,
    Pruned, SampleRanks, SegBelow, SegTies, SegUnits, Segs, SqrtTable, Ticket, TieCuts, TieDone,
    TieItems, TieParts, TileStatus, Totals,
};
use tch::{Device, Kind, Tensor};

mod band;
mod checks;
mod commit;
mod global;
mod obs;
mod rows;
mod select;

use band::*;
pub(crate) use checks::{apply_masks, find_non_finite_into, find_non_finite_many, finite_checks};
pub(crate) use commit::{build_mask, prune_many, sqrt_many, Item};
pub(crate) use global::global_selector;
pub(crate) use obs::obs_sweep;
pub(crate) use rows::select_rows;
use rows::*;
pub(crate) use select::select_each;

use super::{mark, step_timing, unpack_keep};
use super::{Count, FiniteCheck, GlobalSel, Located, RowSel, Rule, Scores};

/// The device's kernels, launching on libtorch's current stream.
pub(super) fn gpu(ordinal: usize) -> std::result::Result<Arc<Gpu>, birdbone_cuda::CudaError> {
    super::stream::register();
    birdbone_cuda::gpu(ordinal)
}
use crate::error::{Error, HostError, Result};

pub(super) fn dt_of(kind: Kind) -> Result<Dt> {
    Ok(match kind {
        Kind::BFloat16 => Dt::BF16,
        Kind::Half => Dt::F16,
        Kind::Float => Dt::F32,
        k => {
            return Err(HostError::Shape {
                op: "CUDA selection",
                message: format!("element type {k:?} (f32, f16 or bf16 only)"),
            }
            .into())
        }
    })
}

pub(super) fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

pub(super) fn ordinal(device: Device) -> usize {
    match device {
        Device::Cuda(i) => i,
        _ => unreachable!("the CUDA path runs on CUDA tensors"),
    }
}

pub(super) fn source(scores: &Scores) -> Result<Source> {
    let (data, kind, scale) = match scores {
        Scores::Magnitude {
            weight,
            scale: None,
        } => (weight, ScoreKind::Magnitude, 0),
        Scores::Magnitude {
            weight,
            scale: Some(s),
        } => (weight, ScoreKind::Scaled, ptr(s)),
        Scores::Dense(t) => (t, ScoreKind::Dense, 0),
    };
    if !data.is_contiguous() {
        return Err(HostError::Shape {
            op: "CUDA selection",
            message: "scores must be read from a contiguous tensor".into(),
        }
        .into());
    }
    if scale % 16 != 0 {
        // The kernels load scales four at a time (engine::aligned_scale makes them so).
        return Err(HostError::Shape {
            op: "CUDA selection",
            message: "column scales must start on a 16-byte boundary".into(),
        }
        .into());
    }
    Ok(Source {
        ptr: ptr(data),
        dt: dt_of(data.kind())?,
        kind,
        scale,
        n: data.numel() as u64,
        cols: scores.cols(),
    })
}

/// Scores the kernels can read: a contiguous copy when the weight is strided.
pub(super) fn readable(scores: &Scores) -> Result<Scores> {
    Ok(match scores {
        Scores::Magnitude { weight, scale } => Scores::Magnitude {
            weight: if weight.is_contiguous() {
                weight.shallow_clone()
            } else {
                weight.f_contiguous()?
            },
            scale: scale.as_ref().map(|s| s.shallow_clone()),
        },
        Scores::Dense(t) => Scores::Dense(t.f_contiguous()?),
    })
}

pub(super) fn zeros(n: i64, kind: Kind, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_zeros([n.max(1)], (kind, device))?)
}

pub(crate) fn minus_ones(n: usize, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_full(
        [n.max(1) as i64],
        -1i64,
        (Kind::Int64, device),
    )?)
}

/// Units (vectors, N:M groups) per chunk of the streaming passes: ~1 MiB of weights, so a 7B
/// model is ~14 K chunks (a table of a third of a MiB, built and uploaded in well under a
/// millisecond) and a persistent grid still balances.
pub(super) const STREAM_CHUNK: u64 = 1 << 16;

/// Small host tables to the device, without a stream synchronisation (see `Gpu::upload_words`).
pub(super) fn upload(v: &[i64], device: Device) -> Result<Tensor> {
    let t = Tensor::f_empty([v.len().max(1) as i64], (Kind::Int64, device))?;
    if !v.is_empty() {
        gpu(ordinal(device))?.upload_words(ptr(&t), v)?;
    }
    Ok(t)
}

pub(super) fn seg_table(segs: &[Seg], device: Device) -> Result<Tensor> {
    let words: Vec<i64> = segs.iter().flat_map(|s| s.words()).collect();
    debug_assert_eq!(words.len(), segs.len() * SEGW);
    upload(&words, device)
}

/// A chunked launch's tables on the device: its segments and their chunks (see
/// `birdbone_cuda::chunk_starts`), from one upload of the segments and their unit counts; the
/// chunk table itself is expanded on the device.
pub(super) struct Tables {
    pub(super) _up: Tensor,
    pub(super) _chunks: Tensor,
    pub(super) segs: u64,
    pub(super) chunks: u64,
    pub(super) nchunks: u32,
}

pub(super) fn chunked_tables(
    g: &Gpu,
    segs: &[Seg],
    units: &[u64],
    chunk: u64,
    device: Device,
) -> Result<Tables> {
    let mut up = Staged::default();
    let segs_at = up.segs(segs);
    let (starts_at, units_at, nchunks) = up.chunk_counts(units, chunk);
    let buf = upload(&up.words, device)?;
    let b = ptr(&buf);
    let chunks = Tensor::f_empty([(3 * nchunks).max(1) as i64], (Kind::Int64, device))?;
    if nchunks > 0 {
        g.expand_chunks(
            ChunkStarts(b + starts_at),
            SegUnits(b + units_at),
            units.len() as u32,
            chunk,
            nchunks,
            Chunks(ptr(&chunks)),
        )?;
    }
    Ok(Tables {
        segs: b + segs_at,
        chunks: ptr(&chunks),
        nchunks: nchunks as u32,
        _up: buf,
        _chunks: chunks,
    })
}

pub(super) fn to_host_i64(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(
        &t.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?,
    )?)
}

/// Per-item results of a batched launch, read back from the device once.
pub(crate) struct HostCopy {
    pub(super) device: parking_lot::Mutex<Tensor>,
    pub(super) host: OnceLock<Vec<i64>>,
}

impl HostCopy {
    pub(super) fn new(device: Tensor) -> Arc<HostCopy> {
        Arc::new(HostCopy {
            device: parking_lot::Mutex::new(device),
            host: OnceLock::new(),
        })
    }
    pub fn get(&self, i: usize) -> Result<i64> {
        if self.host.get().is_none() {
            let v = to_host_i64(&self.device.lock())?;
            let _ = self.host.set(v);
        }
        Ok(self.host.get().expect("set above")[i])
    }
}

pub(super) fn keys_fit_16(s: &Source) -> bool {
    s.dt == Dt::BF16 && s.kind != ScoreKind::Scaled
}

/// Groups indices by a key, keeping first-seen order.
pub(super) fn group_by<K: PartialEq + Copy>(
    keys: impl IntoIterator<Item = K>,
) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    groups
}
