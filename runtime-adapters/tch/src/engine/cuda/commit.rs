//! Applying the chosen rules in place: batched launches by element type, score kind and rule,
//! masks built and counts read back once.

use birdbone_cuda::{ApplyMode, Dt, Gpu, ScoreKind, Seg, Source};
use birdbone_select::{mask_bytes, ParamQuota};
use tch::{Device, Kind, Tensor};

use super::*;

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
        gpu(ordinal(device))?.sqrt_many(SqrtTable(ptr(&table)), (words.len() / 3) as u32)?;
    }
    Ok(())
}

/// Band hints for `row_prune` over `members` (see `Gpu::row_prune`): the threshold key of one
/// row of each, its middle one, selected exactly (one block a row, one launch), as u32 words in
/// member order after `members.len()` u64 words. Without them every block's first row of each
/// weight has no band to start from (on a 7B model that is 14% of the rows, one in each run of
/// 4 to 15 a block takes).
pub(super) fn band_hints(
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
        Segs(ptr(&table)),
        segs.len() as i32,
        m,
        max_cols,
        true,
        BadFlag(bad_flag),
        BadIndex(bad_index),
    )?;
    Ok(out)
}

/// How the apply kernels treat a parameter's ties: all kept, all pruned, pruned up to a located
/// flat index, or the first `take` in index order ranked while applying.
pub(super) fn mode_of(q: &ParamQuota) -> ApplyMode {
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
pub(super) fn run_rules(
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
                    g.apply_stream(
                        dt,
                        kind,
                        Segs(t.segs),
                        Chunks(t.chunks),
                        t.nchunks,
                        Pruned(ptr(&pruned)),
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
                        Segs(ptr(&table)),
                        segs.len() as i32,
                        first,
                        TileStatus(ptr(&status)),
                        Ticket(ptr(&ticket)),
                        Pruned(ptr(&pruned)),
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
                g.row_apply(
                    dt,
                    kind,
                    Segs(t.segs),
                    Chunks(t.chunks),
                    t.nchunks,
                    Pruned(ptr(&pruned)),
                )?;
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
                    Segs(ptr(&table)),
                    segs.len() as i32,
                    rows,
                    max_cols,
                    same_length,
                    Pruned(ptr(&pruned)),
                    BandStats(band_stats.as_ref().map_or(0, ptr)),
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
                g.nm(
                    dt,
                    kind,
                    m,
                    fast,
                    Segs(t.segs),
                    Chunks(t.chunks),
                    t.nchunks,
                    Pruned(ptr(&pruned)),
                )?;
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
