//! Band selection of a global threshold on the device: histograms, the sampled band, tie
//! location, and the checks that fall back to full histograms.

use birdbone_cuda::{
    chunk_starts, Gpu, ScoreKind, Seg, Source, BAND_MAX, BINS, CHUNK_VECTORS, TIE_PARTS,
};
use birdbone_select::ParamQuota;
use tch::{Device, Kind, Tensor};

use super::*;

/// Launches one histogram pass over `sources` (slot, source), grouped by element type and kind,
/// in chunks so one launch covers many parameters.
pub(super) fn launch_hist(
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
                Segs(t.segs),
                Chunks(t.chunks),
                nchunks,
                Hists(ptr(hists)),
                BadFlag(ptr(bad_flag)),
                BadIndex(ptr(bad_index)),
            )?,
            Pass::Low { his } => g.hist_low(
                dt,
                kind,
                Segs(t.segs),
                Chunks(t.chunks),
                nchunks,
                HighBins(ptr(his)),
                Hists(ptr(hists)),
            )?,
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
pub(super) enum Pass<'a> {
    High {
        bad_flag: &'a Tensor,
        bad_index: &'a Tensor,
    },
    Low {
        his: &'a Tensor,
    },
}

pub(super) fn find_bin(hist: &[i64], r: u64) -> (usize, u64) {
    let mut before = 0u64;
    for (b, &c) in hist.iter().enumerate() {
        if before + c as u64 >= r {
            return (b, before);
        }
        before += c as u64;
    }
    unreachable!("r is at most the total count")
}

pub(super) struct Checked {
    pub(super) flag: Tensor,
    pub(super) index: Tensor,
}

impl Checked {
    pub(super) fn new(slots: usize, device: Device) -> Result<Checked> {
        Ok(Checked {
            flag: zeros(1, Kind::Int, device)?,
            index: minus_ones(slots, device)?,
        })
    }
    /// The first slot with a non-finite value, and the element index.
    pub(super) fn first_bad(&self) -> Result<Option<(usize, u64)>> {
        if self.flag.f_int64_value(&[0])? == 0 {
            return Ok(None);
        }
        Ok(Self::first_in(&to_host_i64(&self.index)?))
    }
    /// `first_bad` from the index array already on the host.
    pub(super) fn first_in(index: &[i64]) -> Option<(usize, u64)> {
        index
            .iter()
            .enumerate()
            .find(|(_, v)| **v != -1)
            .map(|(p, &v)| (p, v as u64))
    }
}

/// A non-finite score found by a selection kernel: the slot's parameter is named by the caller.
pub(super) fn non_finite_score(slot: usize, index: u64) -> (Option<usize>, Error) {
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
pub(super) struct Staged {
    pub(super) words: Vec<i64>,
}

impl Staged {
    pub(super) fn align(&mut self) -> u64 {
        if self.words.len() % 2 == 1 {
            self.words.push(0);
        }
        self.words.len() as u64 * 8
    }
    /// Appends 64-bit words; returns their byte offset.
    pub(super) fn u64s(&mut self, v: &[i64]) -> u64 {
        let at = self.align();
        self.words.extend_from_slice(v);
        at
    }
    /// Appends segment descriptors; returns their byte offset.
    pub(super) fn segs(&mut self, segs: &[Seg]) -> u64 {
        let at = self.align();
        self.words.extend(segs.iter().flat_map(|s| s.words()));
        at
    }
    /// Appends `chunk_starts(units, chunk)` and `units` for `Gpu::expand_chunks`: their byte
    /// offsets and the number of chunks.
    pub(super) fn chunk_counts(&mut self, units: &[u64], chunk: u64) -> (u64, u64, u64) {
        let starts = chunk_starts(units, chunk);
        let n = *starts.last().expect("nseg + 1 words") as u64;
        let starts_at = self.u64s(&starts);
        let at = self.align();
        self.words.extend(units.iter().map(|&u| u as i64));
        (starts_at, at, n)
    }
    /// Appends 32-bit words, two to a 64-bit word (little-endian, as the device reads them).
    pub(super) fn u32s(&mut self, v: &[u32]) -> u64 {
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
pub(super) struct Layout {
    pub(super) bytes: u64,
}

impl Layout {
    pub(super) fn take(&mut self, bytes: u64) -> u64 {
        let at = self.bytes;
        self.bytes += bytes.div_ceil(16) * 16;
        at
    }
}

/// Little-endian readers of a downloaded byte region.
pub(super) fn read_u32s(b: &[u8], at: u64, n: usize) -> Vec<u32> {
    b[at as usize..at as usize + 4 * n]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

pub(super) fn read_u64s(b: &[u8], at: u64, n: usize) -> Vec<u64> {
    b[at as usize..at as usize + 8 * n]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Band bins the band pass counts per chunk, so a parameter's last pruned tie can be located
/// (wider bands, rare, leave the ties to be ranked at the apply instead).
pub(super) const CHUNK_BAND_BINS: usize = 128;

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
pub(super) fn band_select(
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
        ChunkStarts(tb + sample_starts_at),
        SegUnits(tb + sample_units_at),
        sample_units.len() as u32,
        4096,
        sample_nchunks,
        Chunks(wb + sample_chunks_at),
    )
    .map_err(ec)?;
    g.expand_chunks(
        ChunkStarts(tb + starts_at),
        SegUnits(tb + units_at),
        nseg as u32,
        STREAM_CHUNK,
        nchunks as u64,
        Chunks(wb + chunks_at),
    )
    .map_err(ec)?;
    super::mark(device, "band: work zeroed, chunks expanded");
    let (bc, stride) = band_chunks_at.map_or((0, 0), |at| (wb + at, CHUNK_BAND_BINS as u32));
    // 1. The sample, 2. the band from it.
    g.sample_hist(
        dt,
        kind,
        Segs(tb + sample_segs_at),
        Chunks(wb + sample_chunks_at),
        sample_nchunks as u32,
        Hists(wb + sample_at),
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
        Hists(wb + sample_at),
        SampleRanks(tb + ranks_at),
        floor,
        BAND_MAX as u32,
        BandLo(wb + lo_at),
        BandWidth(wb + width_at),
        BadIndex(wb + index_at),
        nseg as u32,
    )
    .map_err(ec)?;
    super::mark(device, "band: choose launched");
    // 3. One pass over everything.
    g.band_pass(
        dt,
        kind,
        Segs(tb + segs_at),
        Chunks(wb + chunks_at),
        nchunks as u32,
        BandLo(wb + lo_at),
        BandWidth(wb + width_at),
        BandHists(wb + band_at),
        BelowBand(wb + below_at),
        BadFlag(wb + flag_at),
        BadIndex(wb + index_at),
        BandChunks(bc),
        stride,
    )
    .map_err(ec)?;
    super::mark(device, "band: pass launched");
    // 4. Every scope resolved, 5. the last pruned tie of each parameter that takes some but not
    // all of its ties located.
    g.band_resolve(
        nq as u32,
        BandHists(wb + band_at),
        BelowBand(wb + below_at),
        FirstSeg(tb + first_seg_at),
        BandWidth(wb + width_at),
        Ks(tb + ks_at),
        ChunkStarts(tb + starts_at),
        stride,
        BandBin(wb + out_bin_at),
        SegBelow(wb + seg_below_at),
        SegTies(wb + seg_ties_at),
        TieItems(wb + items_at),
    )
    .map_err(ec)?;
    super::mark(device, "band: resolve launched");
    if bc != 0 {
        g.tie_locate(
            dt,
            kind,
            Segs(tb + segs_at),
            Chunks(wb + chunks_at),
            TieItems(wb + items_at),
            nseg as u32,
            BandChunks(bc),
            stride,
            BandLo(wb + lo_at),
            TieCuts(wb + cuts_at),
            TieParts(wb + parts_at),
            TieDone(wb + done_at),
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
