//! Per-row selection: a threshold per row.

use birdbone_cuda::{Gpu, ScoreKind, Seg, Source};
use tch::{Kind, Tensor};

use super::*;

/// `eager[i]`: thresholds for every row of `scores[i]` even where the pass that prunes could
/// select them itself (a split selection splices thresholds).
pub(crate) fn select_rows(
    scores: &[Scores],
    ks: &[u64],
    eager: &[bool],
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
                && !eager[i]
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
        g.find_non_finite(
            dt,
            scaled,
            Segs(t.segs),
            Chunks(t.chunks),
            t.nchunks,
            FirstBad(ptr(&check.index)),
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
                Segs(ptr(&table)),
                segs.len() as i32,
                rows,
                max_cols,
                b < 2,
                BadFlag(ptr(&check.flag)),
                BadIndex(ptr(&check.index)),
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
pub(super) fn row_segments(
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
