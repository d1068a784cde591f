//! The CUDA path: `birdbone-cuda`'s kernels on the tensors' device memory. Work is batched: one
//! launch covers every parameter of a pass that shares an element type, score kind and rule, so
//! a 7B model is pruned in a handful of launches. Buffers come from libtorch's caching allocator
//! (so they follow its stream), and results are read back once, when first needed.

use std::sync::{Arc, OnceLock};

use birdbone_cuda::{
    chunk_starts, ApplyMode, Dt, Gpu, ScoreKind, Seg, Source, BAND_MAX, BINS, CHUNK_VECTORS, SEGW,
    TIE_PARTS,
};
use birdbone_select::{mask_bytes, GlobalSelection, ParamQuota};
use tch::{Device, Kind, Tensor};

use super::{Count, FiniteCheck, GlobalSel, Located, RowSel, Rule, Scores};

/// The device's kernels, launching on libtorch's current stream.
fn gpu(ordinal: usize) -> std::result::Result<Arc<Gpu>, birdbone_cuda::CudaError> {
    super::stream::register();
    birdbone_cuda::gpu(ordinal)
}
use crate::error::{Error, HostError, Result};

fn dt_of(kind: Kind) -> Result<Dt> {
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

fn ptr(t: &Tensor) -> u64 {
    t.data_ptr() as u64
}

fn ordinal(device: Device) -> usize {
    match device {
        Device::Cuda(i) => i,
        _ => unreachable!("the CUDA path runs on CUDA tensors"),
    }
}

fn source(scores: &Scores) -> Result<Source> {
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
fn readable(scores: &Scores) -> Result<Scores> {
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

fn zeros(n: i64, kind: Kind, device: Device) -> Result<Tensor> {
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
const STREAM_CHUNK: u64 = 1 << 16;

/// Small host tables to the device, without a stream synchronisation (see `Gpu::upload_words`).
fn upload(v: &[i64], device: Device) -> Result<Tensor> {
    let t = Tensor::f_empty([v.len().max(1) as i64], (Kind::Int64, device))?;
    if !v.is_empty() {
        gpu(ordinal(device))?.upload_words(ptr(&t), v)?;
    }
    Ok(t)
}

fn seg_table(segs: &[Seg], device: Device) -> Result<Tensor> {
    let words: Vec<i64> = segs.iter().flat_map(|s| s.words()).collect();
    debug_assert_eq!(words.len(), segs.len() * SEGW);
    upload(&words, device)
}

/// A chunked launch's tables on the device: its segments and their chunks (see
/// `birdbone_cuda::chunk_starts`), from one upload of the segments and their unit counts; the
/// chunk table itself is expanded on the device.
struct Tables {
    _up: Tensor,
    _chunks: Tensor,
    segs: u64,
    chunks: u64,
    nchunks: u32,
}

fn chunked_tables(
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
            b + starts_at,
            b + units_at,
            units.len() as u32,
            chunk,
            nchunks,
            ptr(&chunks),
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

fn to_host_i64(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(
        &t.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?,
    )?)
}

/// Per-item results of a batched launch, read back from the device once.
pub(crate) struct HostCopy {
    device: parking_lot::Mutex<Tensor>,
    host: OnceLock<Vec<i64>>,
}

impl HostCopy {
    fn new(device: Tensor) -> Arc<HostCopy> {
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

fn keys_fit_16(s: &Source) -> bool {
    s.dt == Dt::BF16 && s.kind != ScoreKind::Scaled
}

/// Groups indices by a key, keeping first-seen order.
fn group_by<K: PartialEq + Copy>(keys: impl IntoIterator<Item = K>) -> Vec<(K, Vec<usize>)> {
    let mut groups: Vec<(K, Vec<usize>)> = Vec::new();
    for (i, k) in keys.into_iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(i),
            None => groups.push((k, vec![i])),
        }
    }
    groups
}

/// Launches one histogram pass over `sources` (slot, source), grouped by element type and kind,
/// in chunks so one launch covers many parameters.
fn launch_hist(
    g: &Gpu,
    device: Device,
    sources: &[(usize, Source)],
    hists: &Tensor,
    pass: Pass<'_>,
) -> Result<()> {
    for ((dt, kind), members) in group_by(sources.iter().map(|(_, s)| (s.dt, s.kind))) {
        let segs: Vec<Seg> = members
            .iter()
            .map(|&i| Seg::of(&sources[i].1, sources[i].0 as u64))
            .collect();
        let units: Vec<u64> = members
            .iter()
            .map(|&i| sources[i].1.n.div_ceil(dt.per_vector()))
            .collect();
        // Enough chunks to fill the GPU, few enough that flushing shared histograms stays cheap.
        let chunk = CHUNK_VECTORS
            .min(units.iter().sum::<u64>().div_ceil(2 * g.sms() as u64))
            .max(1024);
        let t = chunked_tables(g, &segs, &units, chunk, device)?;
        let nchunks = t.nchunks;
        match pass {
            Pass::High {
                bad_flag,
                bad_index,
            } => g.hist_high(
                dt,
                kind,
                t.segs,
                t.chunks,
                nchunks,
                ptr(hists),
                ptr(bad_flag),
                ptr(bad_index),
            )?,
            Pass::Low { his } => {
                g.hist_low(dt, kind, t.segs, t.chunks, nchunks, ptr(his), ptr(hists))?
            }
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Pass<'a> {
    High {
        bad_flag: &'a Tensor,
        bad_index: &'a Tensor,
    },
    Low {
        his: &'a Tensor,
    },
}

fn find_bin(hist: &[i64], r: u64) -> (usize, u64) {
    let mut before = 0u64;
    for (b, &c) in hist.iter().enumerate() {
        if before + c as u64 >= r {
            return (b, before);
        }
        before += c as u64;
    }
    unreachable!("r is at most the total count")
}

struct Checked {
    flag: Tensor,
    index: Tensor,
}

impl Checked {
    fn new(slots: usize, device: Device) -> Result<Checked> {
        Ok(Checked {
            flag: zeros(1, Kind::Int, device)?,
            index: minus_ones(slots, device)?,
        })
    }
    /// The first slot with a non-finite value, and the element index.
    fn first_bad(&self) -> Result<Option<(usize, u64)>> {
        if self.flag.f_int64_value(&[0])? == 0 {
            return Ok(None);
        }
        Ok(Self::first_in(&to_host_i64(&self.index)?))
    }
    /// `first_bad` from the index array already on the host.
    fn first_in(index: &[i64]) -> Option<(usize, u64)> {
        index
            .iter()
            .enumerate()
            .find(|(_, v)| **v != -1)
            .map(|(p, &v)| (p, v as u64))
    }
}

/// A non-finite score found by a selection kernel: the slot's parameter is named by the caller.
fn non_finite_score(slot: usize, index: u64) -> (Option<usize>, Error) {
    (
        Some(slot),
        HostError::NonFinite {
            what: "score",
            param: String::new(),
            index,
        }
        .into(),
    )
}

/// Host tables staged for one upload: each array starts on a 16-byte boundary of the buffer.
#[derive(Default)]
struct Staged {
    words: Vec<i64>,
}

impl Staged {
    fn align(&mut self) -> u64 {
        if self.words.len() % 2 == 1 {
            self.words.push(0);
        }
        self.words.len() as u64 * 8
    }
    /// Appends 64-bit words; returns their byte offset.
    fn u64s(&mut self, v: &[i64]) -> u64 {
        let at = self.align();
        self.words.extend_from_slice(v);
        at
    }
    /// Appends segment descriptors; returns their byte offset.
    fn segs(&mut self, segs: &[Seg]) -> u64 {
        let at = self.align();
        self.words.extend(segs.iter().flat_map(|s| s.words()));
        at
    }
    /// Appends `chunk_starts(units, chunk)` and `units` for `Gpu::expand_chunks`: their byte
    /// offsets and the number of chunks.
    fn chunk_counts(&mut self, units: &[u64], chunk: u64) -> (u64, u64, u64) {
        let starts = chunk_starts(units, chunk);
        let n = *starts.last().expect("nseg + 1 words") as u64;
        let starts_at = self.u64s(&starts);
        let at = self.align();
        self.words.extend(units.iter().map(|&u| u as i64));
        (starts_at, at, n)
    }
    /// Appends 32-bit words, two to a 64-bit word (little-endian, as the device reads them).
    fn u32s(&mut self, v: &[u32]) -> u64 {
        let at = self.align();
        self.words.extend(
            v.chunks(2)
                .map(|p| (p[0] as u64 | (p.get(1).copied().unwrap_or(0) as u64) << 32) as i64),
        );
        at
    }
}

/// Byte regions of one device buffer, reserved in order on 16-byte boundaries.
#[derive(Default)]
struct Layout {
    bytes: u64,
}

impl Layout {
    fn take(&mut self, bytes: u64) -> u64 {
        let at = self.bytes;
        self.bytes += bytes.div_ceil(16) * 16;
        at
    }
}

/// Little-endian readers of a downloaded byte region.
fn read_u32s(b: &[u8], at: u64, n: usize) -> Vec<u32> {
    b[at as usize..at as usize + 4 * n]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

fn read_u64s(b: &[u8], at: u64, n: usize) -> Vec<u64> {
    b[at as usize..at as usize + 8 * n]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Band bins the band pass counts per chunk, so a parameter's last pruned tie can be located
/// (wider bands, rare, leave the ties to be ranked at the apply instead).
const CHUNK_BAND_BINS: usize = 128;

/// Exact selections over scopes of bf16-keyed sources by band selection (see the kernels): a
/// sample fixes a narrow band of keys, one memory-bound pass counts below it and histograms inside
/// it. `scopes[q]` is a range of `sources` selected together (the ranges in order, covering every
/// source), `ks[q]` its count. `Ok(None)` when
/// the band missed or came out too wide: the caller then runs the full histogram, which gives
/// the same exact answer, only slower.
///
/// Every step runs on the device, one launch after another, from tables uploaded in one copy
/// into buffers allocated at once; the host waits once, for one read-back at the end (the band
/// is chosen, the counts resolved and the partial ties located on the device).
fn band_select(
    g: &Gpu,
    device: Device,
    sources: &[Source],
    scopes: &[std::ops::Range<usize>],
    ks: &[u64],
) -> Located<Option<Vec<ParamQuota>>> {
    let e = |e: Error| (None, e);
    let ec = |x: birdbone_cuda::CudaError| (None, Error::from(x));
    let (dt, kind) = (sources[0].dt, sources[0].kind);
    let nq = scopes.len();
    let nseg = sources.len();
    super::mark(device, "band: start");
    // The host's tables. A strided sample of every scope: about 256 K keys for one big scope,
    // 16 K per scope otherwise.
    let mut sample_segs = Vec::new();
    let mut sample_units = Vec::new();
    let mut m = vec![0u64; nq];
    let mut n = vec![0u64; nq];
    for (q, r) in scopes.iter().enumerate() {
        let nvec_total: u64 = r
            .clone()
            .map(|i| sources[i].n.div_ceil(dt.per_vector()))
            .sum();
        let target = if nq == 1 { 1u64 << 18 } else { 1 << 14 };
        let stride = (nvec_total / target).max(1);
        for i in r.clone() {
            let s = &sources[i];
            let nvec = s.n.div_ceil(dt.per_vector());
            let units = nvec.div_ceil(stride);
            let last_vi = (units - 1) * stride;
            let last_valid = (s.n - last_vi * dt.per_vector()).min(dt.per_vector());
            m[q] += (units - 1) * dt.per_vector() + last_valid;
            n[q] += s.n;
            sample_segs.push(Seg {
                scope: stride,
                ..Seg::of(s, q as u64)
            });
            sample_units.push(units);
        }
    }
    // The band's ends: sample ranks around k with a margin of six standard deviations (0 and !0
    // leave an end open).
    let mut ranks = Vec::with_capacity(2 * nq);
    for q in 0..nq {
        if ks[q] == 0 || ks[q] >= n[q] {
            return Ok(None); // degenerate: the full histogram handles these
        }
        let p = ks[q] as f64 / n[q] as f64;
        let r = p * m[q] as f64;
        let margin = 6.0 * (m[q] as f64 * p * (1.0 - p)).sqrt() + 32.0;
        let (a, b) = ((r - margin).floor(), (r + margin).ceil());
        ranks.push(if a < 1.0 { 0 } else { a as i64 });
        ranks.push(if b > m[q] as f64 { -1 } else { b as i64 });
    }
    let scope_of: Vec<usize> = scopes
        .iter()
        .enumerate()
        .flat_map(|(q, r)| r.clone().map(move |_| q))
        .collect();
    assert_eq!(scope_of.len(), nseg, "scopes cover the sources in order");
    let segs: Vec<Seg> = sources
        .iter()
        .enumerate()
        .map(|(i, s)| Seg {
            scope: scope_of[i] as u64,
            ..Seg::of(s, i as u64)
        })
        .collect();
    let units: Vec<u64> = sources
        .iter()
        .map(|s| s.n.div_ceil(dt.per_vector()))
        .collect();
    let mut first_seg: Vec<u32> = scopes.iter().map(|r| r.start as u32).collect();
    first_seg.push(nseg as u32);
    let ks_i: Vec<i64> = ks.iter().map(|&k| k as i64).collect();
    let mut up = Staged::default();
    let sample_segs_at = up.segs(&sample_segs);
    let (sample_starts_at, sample_units_at, sample_nchunks) = up.chunk_counts(&sample_units, 4096);
    let ranks_at = up.u64s(&ranks);
    let segs_at = up.segs(&segs);
    let (starts_at, units_at, nchunks) = up.chunk_counts(&units, STREAM_CHUNK);
    let nchunks = nchunks as usize;
    let first_seg_at = up.u32s(&first_seg);
    let ks_at = up.u64s(&ks_i);
    super::mark(device, "band: tables built");
    let tables = upload(&up.words, device).map_err(e)?;
    super::mark(device, "band: tables uploaded");
    let tb = ptr(&tables);
    // The device's working memory, zeroed at once; the regions read back come last, together.
    let mut lay = Layout::default();
    let sample_at = lay.take((nq * BINS * 4) as u64);
    let band_at = lay.take((nseg * BAND_MAX * 4) as u64);
    let below_at = lay.take(nseg as u64 * 8);
    let items_at = lay.take(nseg as u64 * 40);
    let parts_at = lay.take(nseg as u64 * TIE_PARTS * 4);
    let done_at = lay.take(nseg as u64 * 4);
    let sample_chunks_at = lay.take(sample_nchunks * 24);
    let chunks_at = lay.take(nchunks as u64 * 24);
    // Per-chunk band counts, so the apply needs no ordered pass to split a threshold bin: the
    // counts say which chunk holds a parameter's last pruned tie, and one scan of that chunk
    // finds it (a 7B model: 13 K chunks, 6.5 MiB).
    let band_chunks_at = (nchunks * CHUNK_BAND_BINS * 4 <= 64 << 20)
        .then(|| lay.take((nchunks * CHUNK_BAND_BINS * 4) as u64));
    let back_at = lay.bytes;
    let flag_at = lay.take(8);
    let index_at = lay.take(nseg as u64 * 8);
    let out_bin_at = lay.take(nq as u64 * 4);
    let lo_at = lay.take(nq as u64 * 4);
    let width_at = lay.take(nq as u64 * 4);
    let seg_below_at = lay.take(nseg as u64 * 8);
    let seg_ties_at = lay.take(nseg as u64 * 8);
    let cuts_at = lay.take(nseg as u64 * 8);
    let work = zeros((lay.bytes / 8) as i64, Kind::Int64, device).map_err(e)?;
    let wb = ptr(&work);
    g.expand_chunks(
        tb + sample_starts_at,
        tb + sample_units_at,
        sample_units.len() as u32,
        4096,
        sample_nchunks,
        wb + sample_chunks_at,
    )
    .map_err(ec)?;
    g.expand_chunks(
        tb + starts_at,
        tb + units_at,
        nseg as u32,
        STREAM_CHUNK,
        nchunks as u64,
        wb + chunks_at,
    )
    .map_err(ec)?;
    super::mark(device, "band: work zeroed, chunks expanded");
    let (bc, stride) = band_chunks_at.map_or((0, 0), |at| (wb + at, CHUNK_BAND_BINS as u32));
    // 1. The sample, 2. the band from it.
    g.sample_hist(
        dt,
        kind,
        tb + sample_segs_at,
        wb + sample_chunks_at,
        sample_nchunks as u32,
        wb + sample_at,
    )
    .map_err(ec)?;
    super::mark(device, "band: sample launched");
    let floor = if kind == ScoreKind::Magnitude {
        0x8000
    } else {
        0
    };
    g.band_choose(
        nq as u32,
        wb + sample_at,
        tb + ranks_at,
        floor,
        BAND_MAX as u32,
        wb + lo_at,
        wb + width_at,
        wb + index_at,
        nseg as u32,
    )
    .map_err(ec)?;
    super::mark(device, "band: choose launched");
    // 3. One pass over everything.
    g.band_pass(
        dt,
        kind,
        tb + segs_at,
        wb + chunks_at,
        nchunks as u32,
        wb + lo_at,
        wb + width_at,
        wb + band_at,
        wb + below_at,
        wb + flag_at,
        wb + index_at,
        bc,
        stride,
    )
    .map_err(ec)?;
    super::mark(device, "band: pass launched");
    // 4. Every scope resolved, 5. the last pruned tie of each parameter that takes some but not
    // all of its ties located.
    g.band_resolve(
        nq as u32,
        wb + band_at,
        wb + below_at,
        tb + first_seg_at,
        wb + width_at,
        tb + ks_at,
        tb + starts_at,
        stride,
        wb + out_bin_at,
        wb + seg_below_at,
        wb + seg_ties_at,
        wb + items_at,
    )
    .map_err(ec)?;
    super::mark(device, "band: resolve launched");
    if bc != 0 {
        g.tie_locate(
            dt,
            kind,
            tb + segs_at,
            wb + chunks_at,
            wb + items_at,
            nseg as u32,
            bc,
            stride,
            wb + lo_at,
            wb + cuts_at,
            wb + parts_at,
            wb + done_at,
        )
        .map_err(ec)?;
    }
    super::mark(device, "band: launched");
    let mut back = vec![0u8; (lay.bytes - back_at) as usize];
    g.download(wb + back_at, &mut back).map_err(ec)?;
    super::mark(device, "band: read back");
    let at = |x: u64| x - back_at;
    let flag = read_u32s(&back, at(flag_at), 1)[0];
    let index: Vec<i64> = read_u64s(&back, at(index_at), nseg)
        .into_iter()
        .map(|v| v as i64)
        .collect();
    let out_bin = read_u32s(&back, at(out_bin_at), nq);
    let lo = read_u32s(&back, at(lo_at), nq);
    let width = read_u32s(&back, at(width_at), nq);
    let seg_below = read_u64s(&back, at(seg_below_at), nseg);
    let seg_ties = read_u64s(&back, at(seg_ties_at), nseg);
    let cuts = read_u64s(&back, at(cuts_at), nseg);
    if flag != 0 {
        if let Some((slot, index)) = Checked::first_in(&index) {
            return Err(non_finite_score(slot, index));
        }
    }
    // A band that missed the k-th key, or came out too wide (width 0).
    if out_bin.contains(&u32::MAX) {
        return Ok(None);
    }
    let mut quotas = Vec::with_capacity(nseg);
    for (q, r) in scopes.iter().enumerate() {
        let threshold = (lo[q] + out_bin[q]) << 16;
        let located = bc != 0 && width[q] as usize <= CHUNK_BAND_BINS;
        let mut remaining = ks[q] - r.clone().map(|i| seg_below[i]).sum::<u64>();
        for i in r.clone() {
            let take = seg_ties[i].min(remaining);
            remaining -= take;
            let partial = take > 0 && take < seg_ties[i];
            let tie_cut = match (partial && located, cuts[i]) {
                (false, _) => None,
                (true, u64::MAX) => {
                    return Err((
                        Some(i),
                        HostError::Invalid(
                            "the tie locator missed a tie the band pass counted".into(),
                        )
                        .into(),
                    ))
                }
                (true, cut) => Some(cut),
            };
            quotas.push(ParamQuota {
                threshold,
                below: seg_below[i],
                ties: seg_ties[i],
                take,
                tie_cut,
            });
        }
        debug_assert_eq!(remaining, 0);
    }
    super::mark(device, "band: resolved");
    Ok(Some(quotas))
}

pub(crate) struct CudaGlobal {
    g: Arc<Gpu>,
    device: Device,
    k: u64,
    params: usize,
    n: u64,
    fit16: bool,
    /// The full histograms (a 256 KiB slot per parameter), allocated only when the band path is
    /// not taken: it needs none.
    high: Option<Tensor>,
    low: Option<Tensor>,
    his: Option<Tensor>,
    /// Finiteness of the full histogram pass (allocated with it: the band path checks its own).
    check: Option<Checked>,
    /// Fused scores held for one launch, with their sources (computed once: each costs a few
    /// libtorch calls).
    pending: Vec<(usize, Scores, Source)>,
    hi: Option<(usize, u64)>,
    bad: Option<usize>,
    /// Set when a dense source was launched at once (the band path needs every source held).
    streamed: bool,
    /// The answer of the band path, when it was taken.
    banded: Option<GlobalSelection>,
}

pub(crate) fn global_selector(ordinal: usize, k: u64, params: usize) -> Result<Box<dyn GlobalSel>> {
    let device = Device::Cuda(ordinal);
    Ok(Box::new(CudaGlobal {
        g: gpu(ordinal)?,
        device,
        k,
        params,
        n: 0,
        fit16: true,
        high: None,
        low: None,
        his: None,
        check: None,
        pending: Vec::new(),
        hi: None,
        bad: None,
        streamed: false,
        banded: None,
    }))
}

impl CudaGlobal {
    fn flush(&mut self, low: bool) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let sources: Vec<(usize, Source)> = pending.iter().map(|(p, _, src)| (*p, *src)).collect();
        self.launch(&sources, low)
    }
    fn high(&mut self) -> Result<Tensor> {
        if self.high.is_none() {
            self.high = Some(zeros((self.params * BINS) as i64, Kind::Int, self.device)?);
        }
        Ok(self.high.as_ref().expect("allocated above").shallow_clone())
    }
    fn launch(&mut self, sources: &[(usize, Source)], low: bool) -> Result<()> {
        if sources.is_empty() {
            return Ok(());
        }
        if low {
            let his = self.his.as_ref().expect("set by needs_low_pass");
            launch_hist(
                &self.g,
                self.device,
                sources,
                self.low.as_ref().expect("set"),
                Pass::Low { his },
            )
        } else {
            let high = self.high()?;
            if self.check.is_none() {
                self.check = Some(Checked::new(self.params, self.device)?);
            }
            let check = self.check.as_ref().expect("set above");
            launch_hist(
                &self.g,
                self.device,
                sources,
                &high,
                Pass::High {
                    bad_flag: &check.flag,
                    bad_index: &check.index,
                },
            )
        }
    }
    fn feed(&mut self, p: usize, scores: &Scores, low: bool) -> Result<()> {
        let s = readable(scores)?;
        let src = source(&s)?;
        if !low {
            self.n += src.n;
            self.fit16 &= keys_fit_16(&src);
        }
        match s {
            // Fused scores cost nothing to hold: batch them into one launch.
            s @ Scores::Magnitude { .. } => {
                self.pending.push((p, s, src));
                Ok(())
            }
            // Dense scores are launched now and may be dropped right after: the kernels run
            // in stream order before the allocator reuses their memory.
            s => {
                if !low && !self.streamed {
                    // The band path needs every source at hand: give it up, and histogram the
                    // fused sources held so far the full way.
                    self.streamed = true;
                    self.flush(false)?;
                }
                self.launch(&[(p, source(&s)?)], low)
            }
        }
    }
    fn totals(&self, hists: &Tensor) -> Result<Vec<i64>> {
        let total = zeros(BINS as i64, Kind::Int64, self.device)?;
        self.g
            .sum_slots(ptr(hists), self.params as u32, ptr(&total))?;
        to_host_i64(&total)
    }
    fn slot_counts(&self, hists: &Tensor, bin: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        let at = zeros(self.params as i64, Kind::Int64, self.device)?;
        let below = zeros(self.params as i64, Kind::Int64, self.device)?;
        self.g.slot_counts(
            ptr(hists),
            self.params as u32,
            bin as u32,
            ptr(&at),
            ptr(&below),
        )?;
        Ok((to_host_i64(&at)?, to_host_i64(&below)?))
    }
}

impl GlobalSel for CudaGlobal {
    fn feed_high(&mut self, p: usize, scores: &Scores) -> Result<()> {
        self.feed(p, scores, false)
    }

    fn needs_low_pass(&mut self) -> Result<bool> {
        if !self.streamed && !self.pending.is_empty() {
            let sources: Vec<Source> = self.pending.iter().map(|(_, _, src)| *src).collect();
            if sources.iter().all(keys_fit_16)
                && sources
                    .iter()
                    .all(|s| (s.dt, s.kind) == (sources[0].dt, sources[0].kind))
            {
                let order: Vec<usize> = self.pending.iter().map(|(p, _, _)| *p).collect();
                match band_select(
                    &self.g,
                    self.device,
                    &sources,
                    std::slice::from_ref(&(0..sources.len())),
                    &[self.k],
                ) {
                    Ok(Some(quotas)) => {
                        // Quotas come in feed order; the selection reports them by parameter.
                        let mut params = vec![
                            ParamQuota {
                                threshold: 0,
                                below: 0,
                                ties: 0,
                                take: 0,
                                tie_cut: None,
                            };
                            self.params
                        ];
                        let threshold = quotas[0].threshold;
                        for (q, p) in quotas.into_iter().zip(order) {
                            params[p] = q;
                        }
                        self.banded = Some(GlobalSelection {
                            threshold,
                            pruned: self.k,
                            considered: self.n,
                            params,
                        });
                        self.pending.clear();
                        return Ok(false);
                    }
                    Ok(None) => {}
                    Err((slot, err)) => {
                        self.bad = slot.map(|i| order[i]);
                        return Err(err);
                    }
                }
            }
        }
        self.flush(false)?;
        if let Some((p, index)) = self
            .check
            .as_ref()
            .map(Checked::first_bad)
            .transpose()?
            .flatten()
        {
            self.bad = Some(p);
            return Err(HostError::NonFinite {
                what: "score",
                param: String::new(),
                index,
            }
            .into());
        }
        if self.k > self.n {
            birdbone_host::bail!("cannot select {} of {} weights", self.k, self.n);
        }
        if self.k == 0 {
            return Ok(false);
        }
        let high = self.high()?;
        let total = self.totals(&high)?;
        let (hi, before) = find_bin(&total, self.k);
        self.hi = Some((hi, before));
        if self.fit16 {
            return Ok(false);
        }
        self.low = Some(zeros((self.params * BINS) as i64, Kind::Int, self.device)?);
        self.his = Some(Tensor::f_full(
            [self.params as i64],
            hi as i64,
            (Kind::Int, self.device),
        )?);
        Ok(true)
    }

    fn feed_low(&mut self, p: usize, scores: &Scores) -> Result<()> {
        self.feed(p, scores, true)
    }

    fn finish(mut self: Box<Self>) -> Result<GlobalSelection> {
        if let Some(done) = self.banded.take() {
            return Ok(done);
        }
        let Some((hi, before_hi)) = self.hi else {
            let params = (0..self.params)
                .map(|_| ParamQuota {
                    threshold: 0,
                    below: 0,
                    ties: 0,
                    take: 0,
                    tie_cut: None,
                })
                .collect();
            return Ok(GlobalSelection {
                threshold: 0,
                pruned: 0,
                considered: self.n,
                params,
            });
        };
        let high = self.high()?;
        let (threshold, below, ties) = if self.low.is_none() {
            let (at, below) = self.slot_counts(&high, hi)?;
            ((hi as u32) << 16, below, at)
        } else {
            self.flush(true)?;
            let low = self.low.as_ref().expect("set");
            let (lo, _) = find_bin(&self.totals(low)?, self.k - before_hi);
            let (at, below_lo) = self.slot_counts(low, lo)?;
            let (_, below_hi) = self.slot_counts(&high, hi)?;
            (
                ((hi as u32) << 16) | lo as u32,
                below_hi.iter().zip(&below_lo).map(|(a, b)| a + b).collect(),
                at,
            )
        };
        let mut remaining = self.k - below.iter().map(|&b| b as u64).sum::<u64>();
        let params = (0..self.params)
            .map(|p| {
                let take = (ties[p] as u64).min(remaining);
                remaining -= take;
                ParamQuota {
                    threshold,
                    below: below[p] as u64,
                    ties: ties[p] as u64,
                    take,
                    tie_cut: None,
                }
            })
            .collect();
        Ok(GlobalSelection {
            threshold,
            pruned: self.k,
            considered: self.n,
            params,
        })
    }

    fn bad_param(&self) -> Option<usize> {
        self.bad
    }
}

pub(crate) fn select_each(
    ordinal: usize,
    scores: &[Scores],
    ks: &[u64],
) -> Result<Vec<ParamQuota>, (Option<usize>, Error)> {
    let e = |e: Error| (None, e);
    let device = Device::Cuda(ordinal);
    let g = gpu(ordinal).map_err(|x| e(x.into()))?;
    let p = scores.len();
    let readable: Vec<Scores> = scores
        .iter()
        .map(readable)
        .collect::<Result<_>>()
        .map_err(e)?;
    let sources: Vec<(usize, Source)> = readable
        .iter()
        .enumerate()
        .map(|(i, s)| Ok((i, source(s)?)))
        .collect::<Result<_>>()
        .map_err(e)?;
    for ((i, s), &k) in sources.iter().zip(ks) {
        if k > s.n {
            return Err((
                Some(*i),
                HostError::Invalid(format!("cannot select {k} of {} weights", s.n)).into(),
            ));
        }
    }
    // bf16 magnitudes: band selection, one scope per parameter. It reads every weight once, like
    // the full histogram, and also locates each parameter's last pruned tie, so the apply is a
    // plain stream instead of an ordered pass.
    let plain: Vec<Source> = sources.iter().map(|(_, s)| *s).collect();
    if !plain.is_empty()
        && plain.iter().all(keys_fit_16)
        && plain
            .iter()
            .all(|s| (s.dt, s.kind) == (plain[0].dt, plain[0].kind))
    {
        let scopes: Vec<std::ops::Range<usize>> = (0..p).map(|i| i..i + 1).collect();
        if let Some(quotas) = band_select(&g, device, &plain, &scopes, ks)? {
            return Ok(quotas);
        }
    }
    let high = zeros((p * BINS) as i64, Kind::Int, device).map_err(e)?;
    let check = Checked::new(p, device).map_err(e)?;
    launch_hist(
        &g,
        device,
        &sources,
        &high,
        Pass::High {
            bad_flag: &check.flag,
            bad_index: &check.index,
        },
    )
    .map_err(e)?;
    let ks_i: Vec<i64> = ks.iter().map(|&k| k as i64).collect();
    let ks_d = upload(&ks_i, device).map_err(e)?;
    let bins = zeros(p as i64, Kind::Int, device).map_err(e)?;
    let before = zeros(p as i64, Kind::Int64, device).map_err(e)?;
    let at = zeros(p as i64, Kind::Int64, device).map_err(e)?;
    g.find_slot_bins(
        ptr(&high),
        p as u32,
        ptr(&ks_d),
        ptr(&bins),
        ptr(&before),
        ptr(&at),
    )
    .map_err(|x| e(x.into()))?;
    let fit16 = sources.iter().all(|(_, s)| keys_fit_16(s));
    let low = if fit16 {
        None
    } else {
        let low = zeros((p * BINS) as i64, Kind::Int, device).map_err(e)?;
        launch_hist(&g, device, &sources, &low, Pass::Low { his: &bins }).map_err(e)?;
        let ks2 = ks_d.f_sub(&before).map_err(|x| e(x.into()))?;
        let lb = zeros(p as i64, Kind::Int, device).map_err(e)?;
        let lbe = zeros(p as i64, Kind::Int64, device).map_err(e)?;
        let la = zeros(p as i64, Kind::Int64, device).map_err(e)?;
        g.find_slot_bins(
            ptr(&low),
            p as u32,
            ptr(&ks2),
            ptr(&lb),
            ptr(&lbe),
            ptr(&la),
        )
        .map_err(|x| e(x.into()))?;
        Some((lb, lbe, la))
    };
    if let Some((slot, index)) = check.first_bad().map_err(e)? {
        return Err(non_finite_score(slot, index));
    }
    let h = |t: &Tensor| to_host_i64(t).map_err(e);
    let (bins, before, at) = (h(&bins)?, h(&before)?, h(&at)?);
    let low = match &low {
        Some((a, b, c)) => Some((h(a)?, h(b)?, h(c)?)),
        None => None,
    };
    Ok((0..p)
        .map(|i| {
            if ks[i] == 0 {
                return ParamQuota {
                    threshold: 0,
                    below: 0,
                    ties: 0,
                    take: 0,
                    tie_cut: None,
                };
            }
            let hi = bins[i] as u32;
            let (threshold, below, ties) = match &low {
                None => (hi << 16, before[i] as u64, at[i] as u64),
                Some((lb, lbe, la)) => (
                    (hi << 16) | lb[i] as u32,
                    before[i] as u64 + lbe[i] as u64,
                    la[i] as u64,
                ),
            };
            ParamQuota {
                threshold,
                below,
                ties,
                take: ks[i] - below,
                tie_cut: None,
            }
        })
        .collect())
}

pub(crate) fn select_rows(
    scores: &[Scores],
    ks: &[u64],
) -> Result<(Vec<RowSel>, Vec<FiniteCheck>)> {
    let device = scores[0].device();
    super::mark(device, "rows: start");
    let g = gpu(ordinal(device))?;
    let readable: Vec<Scores> = scores.iter().map(readable).collect::<Result<_>>()?;
    let sources: Vec<Source> = readable.iter().map(source).collect::<Result<_>>()?;
    for (s, &k) in sources.iter().zip(ks) {
        if k > s.cols {
            birdbone_host::bail!("cannot select {k} of {} weights per row", s.cols);
        }
    }
    let check = Checked::new(scores.len(), device)?;
    // Fused magnitude scores of the model's own contiguous weight are selected by the pass that
    // prunes (one read and one write of the weight instead of a selection read, then a read and
    // a write); here only their finiteness is checked, so a bad score fails the plan before
    // anything is written. The others get thresholds now.
    let at_apply: Vec<bool> = (0..scores.len())
        .map(|i| {
            matches!((&scores[i], &readable[i]), (Scores::Magnitude { weight: a, .. }, Scores::Magnitude { weight: b, .. }) if a.data_ptr() == b.data_ptr())
                && Gpu::row_prune_fits(&sources[i])
        })
        .collect();
    let mut sels: Vec<Option<RowSel>> = (0..scores.len()).map(|_| None).collect();
    let fused: Vec<usize> = (0..scores.len()).filter(|&i| at_apply[i]).collect();
    for ((dt, kind), members) in group_by(fused.iter().map(|&i| (sources[i].dt, sources[i].kind))) {
        let members: Vec<usize> = members.iter().map(|&m| fused[m]).collect();
        let segs: Vec<Seg> = members
            .iter()
            .map(|&i| Seg::of(&sources[i], i as u64))
            .collect();
        let units: Vec<u64> = members
            .iter()
            .map(|&i| sources[i].n / dt.per_vector())
            .collect();
        let t = chunked_tables(&g, &segs, &units, STREAM_CHUNK, device)?;
        let scaled = kind == ScoreKind::Scaled;
        g.find_non_finite(dt, scaled, t.segs, t.chunks, t.nchunks, ptr(&check.index))?;
        for &i in &members {
            sels[i] = Some(RowSel::AtApply { k: ks[i] });
        }
    }
    let eager: Vec<usize> = (0..scores.len()).filter(|&i| !at_apply[i]).collect();
    if !eager.is_empty() {
        let rows: Vec<u64> = eager
            .iter()
            .map(|&i| sources[i].n / sources[i].cols)
            .collect();
        let total: u64 = rows.iter().sum();
        let keys = zeros(total as i64, Kind::Int, device)?;
        let take = zeros(total as i64, Kind::Int, device)?;
        let ties = zeros(total as i64, Kind::Int, device)?;
        let mut off = 0u64;
        for (e, &i) in eager.iter().enumerate() {
            let view = |t: &Tensor| t.narrow(0, off as i64, rows[e] as i64);
            sels[i] = Some(RowSel::Thresholds {
                keys: view(&keys),
                take: view(&take),
                ties: view(&ties),
            });
            off += rows[e];
        }
        // Launches by element type, score kind and row length (the register path sizes its
        // blocks by the longest row of the launch).
        let bucket = |s: &Source| {
            let whole = s.cols % s.dt.per_vector() == 0;
            match (whole, s.cols.div_ceil(s.dt.per_vector())) {
                (true, v) if v <= 512 => 0u8,
                (true, v) if v <= birdbone_cuda::ROW_REG_MAX_THREADS * birdbone_cuda::ROW_REG_V => {
                    1
                }
                _ => 2,
            }
        };
        for ((dt, kind, b), members) in group_by(
            eager
                .iter()
                .map(|&i| (sources[i].dt, sources[i].kind, bucket(&sources[i]))),
        ) {
            let members: Vec<usize> = members.iter().map(|&m| eager[m]).collect();
            let (segs, rows, max_cols) = row_segments(&members, &sources, |i| {
                let Some(RowSel::Thresholds { keys, take, ties }) = &sels[i] else {
                    unreachable!("made above")
                };
                Seg {
                    k: ks[i],
                    t: ptr(keys),
                    take: ptr(take),
                    mode: ptr(ties),
                    ..Seg::of(&sources[i], i as u64)
                }
            });
            let table = seg_table(&segs, device)?;
            g.row_select(
                dt,
                kind,
                ptr(&table),
                segs.len() as i32,
                rows,
                max_cols,
                b < 2,
                ptr(&check.flag),
                ptr(&check.index),
            )?;
        }
    }
    super::mark(device, "rows: launched");
    let copy = HostCopy::new(check.index);
    let checks = (0..scores.len())
        .map(|i| FiniteCheck::Batch(copy.clone(), i))
        .collect();
    Ok((
        sels.into_iter()
            .map(|s| s.expect("every parameter"))
            .collect(),
        checks,
    ))
}

/// Segments of whole rows for the row kernels (`seg` gives each member's, `first` is set here
/// to its first row in the launch): the segments, the launch's rows and its longest row.
fn row_segments(
    members: &[usize],
    sources: &[Source],
    seg: impl Fn(usize) -> Seg,
) -> (Vec<Seg>, u64, u64) {
    let mut first = 0u64;
    let segs = members
        .iter()
        .map(|&i| {
            let s = Seg { first, ..seg(i) };
            first += sources[i].n / sources[i].cols;
            s
        })
        .collect();
    let max_cols = members.iter().map(|&i| sources[i].cols).max().unwrap_or(1);
    (segs, first, max_cols)
}

pub(crate) fn sqrt_many(pairs: &[(Tensor, Tensor)]) -> Result<()> {
    let mut devices: Vec<Device> = Vec::new();
    for (x, _) in pairs {
        if !devices.contains(&x.device()) {
            devices.push(x.device());
        }
    }
    for device in devices {
        let words: Vec<i64> = pairs
            .iter()
            .filter(|(x, _)| x.device() == device)
            .flat_map(|(x, y)| [ptr(x) as i64, ptr(y) as i64, x.numel() as i64])
            .collect();
        let table = upload(&words, device)?;
        gpu(ordinal(device))?.sqrt_many(ptr(&table), (words.len() / 3) as u32)?;
    }
    Ok(())
}

/// Band hints for `row_prune` over `members` (see `Gpu::row_prune`): the threshold key of one
/// row of each, its middle one, selected exactly (one block a row, one launch), as u32 words in
/// member order after `members.len()` u64 words. Without them every block's first row of each
/// weight has no band to start from (on a 7B model that is 14% of the rows, one in each run of
/// 4 to 15 a block takes).
fn band_hints(
    g: &Gpu,
    dt: Dt,
    kind: ScoreKind,
    members: &[usize],
    sources: &[Source],
    k_of: impl Fn(usize) -> u64,
    device: Device,
) -> Result<Tensor> {
    let m = members.len() as u64;
    // One allocation: the select's first-bad indices (!0; unused, as the plan checked every
    // score), the hint keys, its tie outputs, and its flag.
    let out = minus_ones((1 + 3 * m) as usize, device)?;
    let bad_index = ptr(&out);
    let (keys, take, ties) = (bad_index + 8 * m, bad_index + 12 * m, bad_index + 16 * m);
    let bad_flag = bad_index + 20 * m;
    let segs: Vec<Seg> = members
        .iter()
        .enumerate()
        .map(|(j, &i)| {
            let src = &sources[i];
            let row = src.n / src.cols / 2;
            let at = Source {
                ptr: src.ptr + row * src.cols * (16 / dt.per_vector()),
                n: src.cols,
                ..*src
            };
            Seg {
                first: j as u64,
                k: k_of(i),
                t: keys + 4 * j as u64,
                take: take + 4 * j as u64,
                mode: ties + 4 * j as u64,
                ..Seg::of(&at, j as u64)
            }
        })
        .collect();
    let max_cols = members.iter().map(|&i| sources[i].cols).max().unwrap_or(1);
    let table = seg_table(&segs, device)?;
    g.row_select(
        dt,
        kind,
        ptr(&table),
        segs.len() as i32,
        m,
        max_cols,
        true,
        bad_flag,
        bad_index,
    )?;
    Ok(out)
}

/// How the apply kernels treat a parameter's ties: all kept, all pruned, pruned up to a located
/// flat index, or the first `take` in index order ranked while applying.
fn mode_of(q: &ParamQuota) -> ApplyMode {
    if q.take == 0 {
        ApplyMode::KeepTies
    } else if q.take >= q.ties {
        ApplyMode::PruneTies
    } else if q.tie_cut.is_some() {
        ApplyMode::TiesToIndex
    } else {
        ApplyMode::RankTies
    }
}

/// One item of a batched prune: the weight, its scores and the rule. `write` says whether the
/// weight is written (the scores must then be the weight's own magnitude).
pub(crate) struct Item<'a> {
    pub weight: &'a Tensor,
    pub scores: &'a Scores,
    pub rule: &'a Rule,
}

/// Runs the rules of `items` with the kernels, writing the weights when `write` and the masks when
/// `want_mask`. Items must read contiguous data on one device.
fn run_rules(
    items: &[Item<'_>],
    write: bool,
    want_mask: bool,
) -> Result<Vec<(Option<Tensor>, Count)>> {
    let device = items[0].scores.device();
    super::mark(device, "rules: start");
    let g = gpu(ordinal(device))?;
    let sources: Vec<Source> = items
        .iter()
        .map(|it| source(it.scores))
        .collect::<Result<_>>()?;
    // One mask buffer for the batch; each item's mask is a view of it (4-byte aligned slices).
    let mask_len: Vec<u64> = sources
        .iter()
        .map(|s| mask_bytes(s.n as usize) as u64)
        .collect();
    let all_masks = if want_mask {
        Some(zeros(
            mask_len.iter().sum::<u64>() as i64,
            Kind::Uint8,
            device,
        )?)
    } else {
        None
    };
    let mut masks = Vec::with_capacity(items.len());
    let mut off = 0u64;
    for &len in &mask_len {
        masks.push(
            all_masks
                .as_ref()
                .map(|m| m.narrow(0, off as i64, len as i64)),
        );
        off += len;
    }
    super::mark(device, "rules: sources and masks");
    let pruned = zeros(items.len() as i64, Kind::Int64, device)?;
    super::mark(device, "rules: counts zeroed");
    let base = |i: usize| Seg {
        mask: masks[i].as_ref().map_or(0, ptr),
        write,
        ..Seg::of(&sources[i], i as u64)
    };
    #[derive(Clone, Copy, PartialEq)]
    enum RowLen {
        Exactly(u64),
        Short(bool),
    }
    #[derive(Clone, Copy, PartialEq)]
    enum What {
        Threshold,
        Rows,
        /// By row length: blocks are sized by the longest row of a launch, so rows of one
        /// length go together where that length fills whole warps (see `Gpu::row_prune`), else
        /// by short (at most 512 vectors) or long.
        RowsAtApply(RowLen),
        Nm(u64, bool),
    }
    let what = |i: usize| match items[i].rule {
        Rule::Threshold(_) => What::Threshold,
        Rule::PerRow(RowSel::Thresholds { .. }) => What::Rows,
        Rule::PerRow(RowSel::AtApply { .. }) => {
            let (dt, cols) = (sources[i].dt, sources[i].cols);
            What::RowsAtApply(if Gpu::row_fills_warps(dt, cols) {
                RowLen::Exactly(cols)
            } else {
                RowLen::Short(cols.div_ceil(dt.per_vector()) <= 512)
            })
        }
        Rule::NM { m, .. } => What::Nm(*m as u64, g.nm_units(&sources[i], *m as u64).1),
    };
    for ((dt, kind, w), members) in
        group_by((0..items.len()).map(|i| (sources[i].dt, sources[i].kind, what(i))))
    {
        match w {
            What::Threshold => {
                // Parameters that take all or none of their ties, or whose last pruned tie was
                // located while selecting, stream through; the others need tie ranks in index
                // order, from the look-back kernel.
                let quota = |i: usize| match items[i].rule {
                    Rule::Threshold(q) => *q,
                    _ => unreachable!("grouped as threshold"),
                };
                let (ranked, streamed): (Vec<usize>, Vec<usize>) = members
                    .iter()
                    .partition(|&&i| mode_of(&quota(i)) == ApplyMode::RankTies);
                if !streamed.is_empty() {
                    let segs: Vec<Seg> = streamed
                        .iter()
                        .map(|&i| {
                            let q = quota(i);
                            Seg {
                                t: q.threshold as u64,
                                take: q.tie_cut.unwrap_or(q.take),
                                mode: mode_of(&q) as u64,
                                ..base(i)
                            }
                        })
                        .collect();
                    let units: Vec<u64> = streamed
                        .iter()
                        .map(|&i| sources[i].n.div_ceil(dt.per_vector()))
                        .collect();
                    let t = chunked_tables(&g, &segs, &units, STREAM_CHUNK, device)?;
                    super::mark(device, "rules: stream tables built");
                    g.apply_stream(dt, kind, t.segs, t.chunks, t.nchunks, ptr(&pruned))?;
                }
                if !ranked.is_empty() {
                    let mut first = 0u64;
                    let segs: Vec<Seg> = ranked
                        .iter()
                        .map(|&i| {
                            let q = quota(i);
                            let seg = Seg {
                                t: q.threshold as u64,
                                take: q.take,
                                mode: ApplyMode::RankTies as u64,
                                first,
                                ..base(i)
                            };
                            first += g.apply_tiles(dt, sources[i].n);
                            seg
                        })
                        .collect();
                    let table = seg_table(&segs, device)?;
                    let status = zeros(first as i64, Kind::Int64, device)?;
                    let ticket = zeros(1, Kind::Int, device)?;
                    g.apply_threshold(
                        dt,
                        kind,
                        ptr(&table),
                        segs.len() as i32,
                        first,
                        ptr(&status),
                        ptr(&ticket),
                        ptr(&pruned),
                    )?;
                }
            }
            What::Rows => {
                let segs: Vec<Seg> = members
                    .iter()
                    .map(|&i| {
                        let Rule::PerRow(RowSel::Thresholds { keys, take, .. }) = items[i].rule
                        else {
                            unreachable!("grouped as rows with thresholds")
                        };
                        Seg {
                            t: ptr(keys),
                            take: ptr(take),
                            ..base(i)
                        }
                    })
                    .collect();
                let units: Vec<u64> = members
                    .iter()
                    .map(|&i| sources[i].n.div_ceil(dt.per_vector()))
                    .collect();
                let t = chunked_tables(&g, &segs, &units, STREAM_CHUNK, device)?;
                g.row_apply(dt, kind, t.segs, t.chunks, t.nchunks, ptr(&pruned))?;
            }
            What::RowsAtApply(_) => {
                if let Some(&i) = members.iter().find(|&&i| !Gpu::row_prune_fits(&sources[i])) {
                    birdbone_host::bail!(
                        "a selection at apply does not fit rows of {} weights (made for other scores?)",
                        sources[i].cols
                    );
                }
                let k_of = |i: usize| {
                    let Rule::PerRow(RowSel::AtApply { k }) = items[i].rule else {
                        unreachable!("grouped as rows selected at apply")
                    };
                    *k
                };
                let hints = band_hints(&g, dt, kind, &members, &sources, k_of, device)?;
                let (segs, rows, max_cols) = row_segments(&members, &sources, |i| Seg {
                    k: k_of(i),
                    ..base(i)
                });
                // Member j's band hint is u32 word j after the first-bad indices.
                let hint_at = ptr(&hints) + 8 * members.len() as u64;
                let segs: Vec<Seg> = segs
                    .into_iter()
                    .enumerate()
                    .map(|(j, s)| Seg {
                        t: hint_at + 4 * j as u64,
                        ..s
                    })
                    .collect();
                let table = seg_table(&segs, device)?;
                let same_length = members.iter().all(|&i| sources[i].cols == max_cols);
                // With step timing on: how often a row's threshold lay outside the band
                // predicted from the row before (such rows cost a second histogram).
                let band_stats = super::step_timing()
                    .then(|| zeros(2, Kind::Int64, device))
                    .transpose()?;
                g.row_prune(
                    dt,
                    kind,
                    ptr(&table),
                    segs.len() as i32,
                    rows,
                    max_cols,
                    same_length,
                    ptr(&pruned),
                    band_stats.as_ref().map_or(0, ptr),
                )?;
                if let Some(b) = &band_stats {
                    let v = to_host_i64(b)?;
                    tracing::trace!(
                        target: "birdbone_tch::steps",
                        "rows of {max_cols} weights: {} of {rows} selected from a predicted band, {} missed it",
                        v[0] - v[1],
                        v[1]
                    );
                }
            }
            What::Nm(m, fast) => {
                let segs: Vec<Seg> = members
                    .iter()
                    .map(|&i| {
                        let Rule::NM { n, .. } = items[i].rule else {
                            unreachable!()
                        };
                        Seg {
                            nkeep: *n as u64,
                            m,
                            ..base(i)
                        }
                    })
                    .collect();
                let units: Vec<u64> = members
                    .iter()
                    .map(|&i| g.nm_units(&sources[i], m).0)
                    .collect();
                let t = chunked_tables(&g, &segs, &units, STREAM_CHUNK, device)?;
                g.nm(dt, kind, m, fast, t.segs, t.chunks, t.nchunks, ptr(&pruned))?;
            }
        }
    }
    super::mark(device, "rules: launched");
    let copy = HostCopy::new(pruned);
    Ok(masks
        .into_iter()
        .enumerate()
        .map(|(i, m)| (m, Count::Batch(copy.clone(), i)))
        .collect())
}

pub(crate) fn build_mask(scores: &Scores, rule: &Rule) -> Result<(Tensor, Count)> {
    let s = readable(scores)?;
    let weight = s.tensor().shallow_clone();
    let mut out = run_rules(
        &[Item {
            weight: &weight,
            scores: &s,
            rule,
        }],
        false,
        true,
    )?;
    let (mask, count) = out.pop().expect("one item");
    Ok((mask.expect("asked for"), count))
}

pub(crate) fn prune_many(
    items: &[Item<'_>],
    want_mask: bool,
) -> Result<Vec<(Option<Tensor>, Count)>> {
    // Fused items (the kernel scores, decides and writes in one pass over the weight) run
    // batched; anything else builds its mask from the scores, then applies it.
    let fused: Vec<usize> = (0..items.len())
        .filter(|&i| {
            let w = items[i].weight;
            w.is_contiguous() && matches!(items[i].scores, Scores::Magnitude { weight, .. } if weight.data_ptr() == w.data_ptr())
        })
        .collect();
    let mut out: Vec<Option<(Option<Tensor>, Count)>> = (0..items.len()).map(|_| None).collect();
    if !fused.is_empty() {
        let batch: Vec<Item<'_>> = fused
            .iter()
            .map(|&i| Item {
                weight: items[i].weight,
                scores: items[i].scores,
                rule: items[i].rule,
            })
            .collect();
        for (i, r) in fused.iter().zip(run_rules(&batch, true, want_mask)?) {
            out[*i] = Some(r);
        }
    }
    for (i, it) in items.iter().enumerate() {
        if out[i].is_none() {
            let (mask, _) = build_mask(it.scores, it.rule)?;
            let count = apply_masks(&[(it.weight, &mask)])?.pop().expect("one");
            out[i] = Some((want_mask.then_some(mask), count));
        }
    }
    Ok(out.into_iter().map(|o| o.expect("filled")).collect())
}

pub(crate) fn find_non_finite_many(ts: &[&Tensor]) -> Result<Vec<FiniteCheck>> {
    let first = minus_ones(ts.len(), ts[0].device())?;
    let slots: Vec<usize> = (0..ts.len()).collect();
    find_non_finite_into(ts, &slots, &first)?;
    Ok(finite_checks(first, ts.len()))
}

/// Slot `slots[i]` of `first` (i64, -1 where finite) gets the smallest flat index of a
/// non-finite element of `ts[i]`, on the device's stream; nothing is read back.
pub(crate) fn find_non_finite_into(ts: &[&Tensor], slots: &[usize], first: &Tensor) -> Result<()> {
    let device = ts[0].device();
    let g = gpu(ordinal(device))?;
    let data: Vec<Tensor> = ts
        .iter()
        .map(|t| t.f_contiguous())
        .collect::<Result<_, _>>()?;
    let dts: Vec<Dt> = data
        .iter()
        .map(|t| dt_of(t.kind()))
        .collect::<Result<_>>()?;
    for (dt, members) in group_by(dts.iter().copied()) {
        let segs: Vec<Seg> = members
            .iter()
            .map(|&i| Seg {
                w: ptr(&data[i]),
                n: data[i].numel() as u64,
                aligned: ptr(&data[i]) % 16 == 0,
                slot: slots[i] as u64,
                ..Default::default()
            })
            .collect();
        let units: Vec<u64> = members
            .iter()
            .map(|&i| (data[i].numel() as u64).div_ceil(dt.per_vector()))
            .collect();
        let t = chunked_tables(&g, &segs, &units, STREAM_CHUNK, device)?;
        g.find_non_finite(dt, false, t.segs, t.chunks, t.nchunks, ptr(first))?;
    }
    super::mark(device, "finiteness checked");
    Ok(())
}

/// The checks of slots `0..slots` of `first`, read back together on the first `get`.
pub(crate) fn finite_checks(first: Tensor, slots: usize) -> Vec<FiniteCheck> {
    let copy = HostCopy::new(first);
    (0..slots)
        .map(|i| FiniteCheck::Batch(copy.clone(), i))
        .collect()
}

pub(crate) fn apply_masks(items: &[(&Tensor, &Tensor)]) -> Result<Vec<Count>> {
    let device = items[0].0.device();
    let g = gpu(ordinal(device))?;
    let pruned = zeros(items.len() as i64, Kind::Int64, device)?;
    let mut out: Vec<Option<Count>> = (0..items.len()).map(|_| None).collect();
    let contiguous: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].0.is_contiguous())
        .collect();
    let dts: Vec<Dt> = contiguous
        .iter()
        .map(|&i| dt_of(items[i].0.kind()))
        .collect::<Result<_>>()?;
    for (dt, members) in group_by(dts.iter().copied()) {
        let segs: Vec<Seg> = members
            .iter()
            .map(|&j| {
                let (w, m) = items[contiguous[j]];
                Seg {
                    w: ptr(w),
                    n: w.numel() as u64,
                    aligned: ptr(w) % 16 == 0,
                    slot: contiguous[j] as u64,
                    mask: ptr(m),
                    ..Default::default()
                }
            })
            .collect();
        let units: Vec<u64> = members
            .iter()
            .map(|&j| (items[contiguous[j]].0.numel() as u64).div_ceil(dt.per_vector()))
            .collect();
        let t = chunked_tables(&g, &segs, &units, STREAM_CHUNK, device)?;
        g.apply_mask(dt, t.segs, t.chunks, t.nchunks, ptr(&pruned))?;
    }
    let copy = HostCopy::new(pruned);
    for &i in &contiguous {
        out[i] = Some(Count::Batch(copy.clone(), i));
    }
    for (i, (w, m)) in items.iter().enumerate() {
        if out[i].is_none() {
            // A strided weight: zero it through libtorch, still in place.
            let _g = tch::no_grad_guard();
            let drop = super::unpack_keep(m, w.numel() as i64)?
                .f_reshape(w.size())?
                .f_logical_not()?;
            let n = drop.f_sum(Kind::Int64)?;
            let _ = w.shallow_clone().f_masked_fill_(&drop, 0.0)?;
            out[i] = Some(Count::Device(n.f_reshape([1])?));
        }
    }
    Ok(out.into_iter().map(|o| o.expect("filled")).collect())
}
