//! The CUDA path: `birdbone-cuda`'s kernels on the tensors' device memory. Work is batched: one
//! launch covers every parameter of a pass that shares an element type, score kind and rule, so
//! a 7B model is pruned in a handful of launches. Buffers come from libtorch's caching allocator
//! (so they follow its stream), and results are read back once, when first needed.

use std::sync::{Arc, OnceLock};

use birdbone_cuda::{
    chunk_table, gpu, Dt, Gpu, ScoreKind, Seg, Source, BAND_MAX, BINS, CHUNK_VECTORS, SEGW,
};
use birdbone_select::{mask_bytes, GlobalSelection, ParamQuota};
use tch::{Device, Kind, Tensor};

use super::{Count, FiniteCheck, GlobalSel, Located, RowSel, Rule, Scores};
use crate::error::{Error, Result};

fn dt_of(kind: Kind) -> Result<Dt> {
    Ok(match kind {
        Kind::BFloat16 => Dt::BF16,
        Kind::Half => Dt::F16,
        Kind::Float => Dt::F32,
        k => {
            return Err(Error::Shape {
                op: "CUDA selection",
                message: format!("element type {k:?} (f32, f16 or bf16 only)"),
            })
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
        return Err(Error::Shape {
            op: "CUDA selection",
            message: "scores must be read from a contiguous tensor".into(),
        });
    }
    if scale % 16 != 0 {
        // The kernels load scales four at a time (engine::aligned_scale makes them so).
        return Err(Error::Shape {
            op: "CUDA selection",
            message: "column scales must start on a 16-byte boundary".into(),
        });
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

fn to_host_i64(t: &Tensor) -> Result<Vec<i64>> {
    Ok(Vec::<i64>::try_from(
        &t.f_to_kind(Kind::Int64)?.f_to_device(Device::Cpu)?,
    )?)
}

/// Several small device tensors read back in one copy (one wait instead of one per tensor).
fn to_host_many(ts: &[&Tensor]) -> Result<Vec<Vec<i64>>> {
    let flat: Vec<Tensor> = ts
        .iter()
        .map(|t| t.f_reshape([-1])?.f_to_kind(Kind::Int64))
        .collect::<Result<_, _>>()?;
    let all = to_host_i64(&Tensor::f_cat(&flat, 0)?)?;
    let mut out = Vec::with_capacity(ts.len());
    let mut at = 0;
    for t in &flat {
        let n = t.numel();
        out.push(all[at..at + n].to_vec());
        at += n;
    }
    Ok(out)
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
        let chunks = chunk_table(&units, chunk);
        let (segs_d, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
        let nchunks = (chunks.len() / 3) as u32;
        match pass {
            Pass::High {
                bad_flag,
                bad_index,
            } => g.hist_high(
                dt,
                kind,
                ptr(&segs_d),
                ptr(&chunks_d),
                nchunks,
                ptr(hists),
                ptr(bad_flag),
                ptr(bad_index),
            )?,
            Pass::Low { his } => g.hist_low(
                dt,
                kind,
                ptr(&segs_d),
                ptr(&chunks_d),
                nchunks,
                ptr(his),
                ptr(hists),
            )?,
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
        Error::NonFinite {
            what: "score",
            param: String::new(),
            index,
        },
    )
}

/// Exact selections over scopes of bf16-keyed sources by band selection (see the kernels): a
/// sample fixes a narrow band of keys, one memory-bound pass counts below it and histograms inside
/// it. `scopes[q]` is a range of `sources` selected together, `ks[q]` its count. `Ok(None)` when
/// the band missed or came out too wide: the caller then runs the full histogram, which gives
/// the same exact answer, only slower.
fn band_select(
    g: &Gpu,
    device: Device,
    sources: &[Source],
    scopes: &[std::ops::Range<usize>],
    ks: &[u64],
) -> Located<Option<Vec<ParamQuota>>> {
    let e = |e: Error| (None, e);
    let (dt, kind) = (sources[0].dt, sources[0].kind);
    let nq = scopes.len();
    // 1. A strided sample of every scope: about 2 M keys for one big scope, 128 K per parameter.
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
    let sample = zeros((nq * BINS) as i64, Kind::Int, device).map_err(e)?;
    let chunks = chunk_table(&sample_units, 4096);
    let (t, c) = (
        seg_table(&sample_segs, device).map_err(e)?,
        upload(&chunks, device).map_err(e)?,
    );
    g.sample_hist(
        dt,
        kind,
        ptr(&t),
        ptr(&c),
        (chunks.len() / 3) as u32,
        ptr(&sample),
    )
    .map_err(|x| e(x.into()))?;
    super::trace(device, "band: sampled");
    // 2. The band: sample ranks around k, with a margin of six standard deviations.
    let mut r_lo = vec![0i64; nq];
    let mut r_hi = vec![0i64; nq];
    let (mut lo_open, mut hi_open) = (vec![false; nq], vec![false; nq]);
    for q in 0..nq {
        if ks[q] == 0 || ks[q] >= n[q] {
            return Ok(None); // degenerate: the full histogram handles these
        }
        let p = ks[q] as f64 / n[q] as f64;
        let r = p * m[q] as f64;
        let margin = 6.0 * (m[q] as f64 * p * (1.0 - p)).sqrt() + 32.0;
        let (a, b) = ((r - margin).floor(), (r + margin).ceil());
        lo_open[q] = a < 1.0;
        hi_open[q] = b > m[q] as f64;
        r_lo[q] = a.max(1.0) as i64;
        r_hi[q] = (b as i64).min(m[q] as i64);
    }
    let bins = |ranks: &[i64]| -> Result<Tensor> {
        let ks_d = upload(ranks, device)?;
        let (b, before, at) = (
            zeros(nq as i64, Kind::Int, device)?,
            zeros(nq as i64, Kind::Int64, device)?,
            zeros(nq as i64, Kind::Int64, device)?,
        );
        g.find_slot_bins(
            ptr(&sample),
            nq as u32,
            ptr(&ks_d),
            ptr(&b),
            ptr(&before),
            ptr(&at),
        )?;
        Ok(b)
    };
    let (lo_bins, hi_bins) = (bins(&r_lo).map_err(e)?, bins(&r_hi).map_err(e)?);
    // The tables of the pass and of the resolve need no band: they are built and uploaded while
    // the device finds it, before the read-back waits.
    let nseg = sources.len();
    let scope_of: Vec<usize> = (0..nseg)
        .map(|i| {
            scopes
                .iter()
                .position(|r| r.contains(&i))
                .expect("every source in a scope")
        })
        .collect();
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
    let chunks = chunk_table(&units, STREAM_CHUNK);
    let (t, c) = (
        seg_table(&segs, device).map_err(e)?,
        upload(&chunks, device).map_err(e)?,
    );
    let mut first_seg: Vec<i64> = scopes.iter().map(|r| r.start as i64).collect();
    first_seg.push(nseg as i64);
    let first_d = upload(&first_seg, device)
        .map_err(e)?
        .f_to_kind(Kind::Int)
        .map_err(|x| e(x.into()))?;
    let ks_i: Vec<i64> = ks.iter().map(|&k| k as i64).collect();
    let ks_d = upload(&ks_i, device).map_err(e)?;
    let out_bin = zeros(nq as i64, Kind::Int, device).map_err(e)?;
    let (seg_below, seg_ties) = (
        zeros(nseg as i64, Kind::Int64, device).map_err(e)?,
        zeros(nseg as i64, Kind::Int64, device).map_err(e)?,
    );
    let band = zeros((nseg * BAND_MAX) as i64, Kind::Int, device).map_err(e)?;
    let below = zeros(nseg as i64, Kind::Int64, device).map_err(e)?;
    let check = Checked::new(nseg, device).map_err(e)?;
    let nchunks = chunks.len() / 3;
    let mut first_chunk = vec![usize::MAX; nseg];
    let mut chunk_count = vec![0usize; nseg];
    for c in 0..nchunks {
        let sg = chunks[3 * c] as usize;
        first_chunk[sg] = first_chunk[sg].min(c);
        chunk_count[sg] += 1;
    }
    let both = to_host_many(&[&lo_bins, &hi_bins]).map_err(e)?;
    let (lo_bins, hi_bins) = (&both[0], &both[1]);
    super::trace(device, "band: band chosen");
    let floor = if kind == ScoreKind::Magnitude {
        0x8000
    } else {
        0
    };
    let mut lo = vec![0i64; nq];
    let mut width = vec![0i64; nq];
    for q in 0..nq {
        let l = if lo_open[q] {
            floor
        } else {
            lo_bins[q] & 0xffff
        };
        let h = if hi_open[q] {
            0xffff
        } else {
            hi_bins[q] & 0xffff
        };
        if h < l || h - l + 1 > BAND_MAX as i64 {
            return Ok(None);
        }
        lo[q] = l;
        width[q] = h - l + 1;
    }
    // 3. One pass over everything.
    let (lo_d, width_d) = (
        upload(&lo, device)
            .map_err(e)?
            .f_to_kind(Kind::Int)
            .map_err(|x| e(x.into()))?,
        upload(&width, device)
            .map_err(e)?
            .f_to_kind(Kind::Int)
            .map_err(|x| e(x.into()))?,
    );
    // Per-chunk band counts, so the apply needs no ordered pass to split a threshold bin: the
    // counts say which chunk holds a parameter's last pruned tie, and one scan of that chunk
    // finds it. Bands are a few bins wide in practice; a very wide one goes without.
    let stride = width.iter().copied().max().unwrap_or(1) as usize;
    let band_chunks = if nchunks * stride * 4 <= 64 << 20 {
        Some(zeros((nchunks * stride) as i64, Kind::Int, device).map_err(e)?)
    } else {
        None
    };
    g.band_pass(
        dt,
        kind,
        ptr(&t),
        ptr(&c),
        (chunks.len() / 3) as u32,
        ptr(&lo_d),
        ptr(&width_d),
        ptr(&band),
        ptr(&below),
        ptr(&check.flag),
        ptr(&check.index),
        band_chunks.as_ref().map_or(0, ptr),
        stride as u32,
    )
    .map_err(|x| e(x.into()))?;
    super::trace(device, "band: pass");
    // 4. Resolve every scope on the device; read back a few numbers per parameter.
    g.band_resolve(
        nq as u32,
        ptr(&band),
        ptr(&below),
        ptr(&first_d),
        ptr(&width_d),
        ptr(&ks_d),
        ptr(&out_bin),
        ptr(&seg_below),
        ptr(&seg_ties),
    )
    .map_err(|x| e(x.into()))?;
    let mut back = to_host_many(&[&check.flag, &check.index, &out_bin, &seg_below, &seg_ties])
        .map_err(e)?
        .into_iter();
    let mut next = || back.next().expect("five arrays read back");
    let (flag, index, out_bin, seg_below, seg_ties) = (next(), next(), next(), next(), next());
    if flag[0] != 0 {
        if let Some((slot, index)) = Checked::first_in(&index) {
            return Err(non_finite_score(slot, index));
        }
    }
    if out_bin.iter().any(|&b| b as u32 == u32::MAX) {
        return Ok(None);
    }
    let mut quotas = Vec::with_capacity(nseg);
    for (q, r) in scopes.iter().enumerate() {
        let threshold = ((lo[q] as u32) + out_bin[q] as u32) << 16;
        let mut remaining = ks[q] - r.clone().map(|i| seg_below[i] as u64).sum::<u64>();
        for i in r.clone() {
            let take = (seg_ties[i] as u64).min(remaining);
            remaining -= take;
            quotas.push(ParamQuota {
                threshold,
                below: seg_below[i] as u64,
                ties: seg_ties[i] as u64,
                take,
                tie_cut: None,
            });
        }
        debug_assert_eq!(remaining, 0);
    }
    super::trace(device, "band: resolved");
    // 5. Where only some of a parameter's ties go, find the last one now.
    if let Some(bc) = &band_chunks {
        let partial: Vec<usize> = (0..nseg)
            .filter(|&i| quotas[i].take > 0 && quotas[i].take < quotas[i].ties)
            .collect();
        if !partial.is_empty() {
            let items: Vec<i64> = partial
                .iter()
                .flat_map(|&i| {
                    [
                        i as i64,
                        first_chunk[i] as i64,
                        chunk_count[i] as i64,
                        out_bin[scope_of[i]],
                        quotas[i].take as i64,
                    ]
                })
                .collect();
            let items_d = upload(&items, device).map_err(e)?;
            let out = zeros(partial.len() as i64, Kind::Int64, device).map_err(e)?;
            g.tie_locate(
                dt,
                kind,
                ptr(&t),
                ptr(&c),
                ptr(&items_d),
                partial.len() as u32,
                ptr(bc),
                stride as u32,
                ptr(&lo_d),
                ptr(&out),
            )
            .map_err(|x| e(x.into()))?;
            for (&i, cut) in partial.iter().zip(to_host_i64(&out).map_err(e)?) {
                if cut < 0 {
                    return Err((
                        Some(i),
                        Error::Invalid("the tie locator missed a tie the band pass counted".into()),
                    ));
                }
                quotas[i].tie_cut = Some(cut as u64);
            }
        }
    }
    super::trace(device, "band: ties located");
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
    check: Checked,
    pending: Vec<(usize, Scores)>,
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
        check: Checked::new(params, device)?,
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
        let sources: Vec<(usize, Source)> = pending
            .iter()
            .map(|(p, s)| Ok((*p, source(s)?)))
            .collect::<Result<_>>()?;
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
            launch_hist(
                &self.g,
                self.device,
                sources,
                &high,
                Pass::High {
                    bad_flag: &self.check.flag,
                    bad_index: &self.check.index,
                },
            )
        }
    }
    fn feed(&mut self, p: usize, scores: &Scores, low: bool) -> Result<()> {
        let s = readable(scores)?;
        if !low {
            let src = source(&s)?;
            self.n += src.n;
            self.fit16 &= keys_fit_16(&src);
        }
        match s {
            // Fused scores cost nothing to hold: batch them into one launch.
            s @ Scores::Magnitude { .. } => {
                self.pending.push((p, s));
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
            let sources: Vec<Source> = self
                .pending
                .iter()
                .map(|(_, s)| source(s))
                .collect::<Result<_>>()?;
            if sources.iter().all(keys_fit_16)
                && sources
                    .iter()
                    .all(|s| (s.dt, s.kind) == (sources[0].dt, sources[0].kind))
            {
                let order: Vec<usize> = self.pending.iter().map(|(p, _)| *p).collect();
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
        if let Some((p, index)) = self.check.first_bad()? {
            self.bad = Some(p);
            return Err(Error::NonFinite {
                what: "score",
                param: String::new(),
                index,
            });
        }
        if self.k > self.n {
            crate::bail!("cannot select {} of {} weights", self.k, self.n);
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
                Error::Invalid(format!("cannot select {k} of {} weights", s.n)),
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
    let g = gpu(ordinal(device))?;
    let readable: Vec<Scores> = scores.iter().map(readable).collect::<Result<_>>()?;
    let sources: Vec<Source> = readable.iter().map(source).collect::<Result<_>>()?;
    for (s, &k) in sources.iter().zip(ks) {
        if k > s.cols {
            crate::bail!("cannot select {k} of {} weights per row", s.cols);
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
        let chunks = chunk_table(&units, STREAM_CHUNK);
        let (table, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
        let nchunks = (chunks.len() / 3) as u32;
        let scaled = kind == ScoreKind::Scaled;
        g.find_non_finite(
            dt,
            scaled,
            ptr(&table),
            ptr(&chunks_d),
            nchunks,
            ptr(&check.index),
        )?;
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

/// The apply kernels' mode: 0 keeps every tie, 1 prunes every tie, 2 prunes the first `take`
/// in index order (ranked while applying), 3 prunes ties up to a located flat index.
fn mode_of(q: &ParamQuota) -> u64 {
    if q.take == 0 {
        0
    } else if q.take >= q.ties {
        1
    } else if q.tie_cut.is_some() {
        3
    } else {
        2
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
    let pruned = zeros(items.len() as i64, Kind::Int64, device)?;
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
                let (ranked, streamed): (Vec<usize>, Vec<usize>) =
                    members.iter().partition(|&&i| mode_of(&quota(i)) == 2);
                if !streamed.is_empty() {
                    let segs: Vec<Seg> = streamed
                        .iter()
                        .map(|&i| {
                            let q = quota(i);
                            Seg {
                                t: q.threshold as u64,
                                take: q.tie_cut.unwrap_or(q.take),
                                mode: mode_of(&q),
                                ..base(i)
                            }
                        })
                        .collect();
                    let units: Vec<u64> = streamed
                        .iter()
                        .map(|&i| sources[i].n.div_ceil(dt.per_vector()))
                        .collect();
                    let chunks = chunk_table(&units, STREAM_CHUNK);
                    let (table, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
                    g.apply_stream(
                        dt,
                        kind,
                        ptr(&table),
                        ptr(&chunks_d),
                        (chunks.len() / 3) as u32,
                        ptr(&pruned),
                    )?;
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
                                mode: 2,
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
                let chunks = chunk_table(&units, STREAM_CHUNK);
                let (table, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
                g.row_apply(
                    dt,
                    kind,
                    ptr(&table),
                    ptr(&chunks_d),
                    (chunks.len() / 3) as u32,
                    ptr(&pruned),
                )?;
            }
            What::RowsAtApply(_) => {
                if let Some(&i) = members.iter().find(|&&i| !Gpu::row_prune_fits(&sources[i])) {
                    crate::bail!(
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
                // With BIRDBONE_TRACE=1: how often a row's threshold lay outside the band
                // predicted from the row before (such rows cost a second histogram).
                let band_stats = super::tracing()
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
                    eprintln!(
                        "trace rows of {max_cols} weights: {} of {rows} selected from a predicted band, {} missed it",
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
                let chunks = chunk_table(&units, STREAM_CHUNK);
                let (table, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
                g.nm(
                    dt,
                    kind,
                    m,
                    fast,
                    ptr(&table),
                    ptr(&chunks_d),
                    (chunks.len() / 3) as u32,
                    ptr(&pruned),
                )?;
            }
        }
    }
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
        let chunks = chunk_table(&units, STREAM_CHUNK);
        let (table, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
        g.find_non_finite(
            dt,
            false,
            ptr(&table),
            ptr(&chunks_d),
            (chunks.len() / 3) as u32,
            ptr(first),
        )?;
    }
    super::trace(device, "finiteness checked");
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
        let chunks = chunk_table(&units, STREAM_CHUNK);
        let (table, chunks_d) = (seg_table(&segs, device)?, upload(&chunks, device)?);
        g.apply_mask(
            dt,
            ptr(&table),
            ptr(&chunks_d),
            (chunks.len() / 3) as u32,
            ptr(&pruned),
        )?;
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
