//! Per-parameter selection: one exact threshold per parameter, batched.

use birdbone_cuda::{Source, BINS};
use birdbone_select::ParamQuota;
use tch::{Device, Kind, Tensor};

use super::*;

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
        Hists(ptr(&high)),
        p as u32,
        Ks(ptr(&ks_d)),
        Bins(ptr(&bins)),
        CountsBelow(ptr(&before)),
        CountsAt(ptr(&at)),
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
            Hists(ptr(&low)),
            p as u32,
            Ks(ptr(&ks2)),
            Bins(ptr(&lb)),
            CountsBelow(ptr(&lbe)),
            CountsAt(ptr(&la)),
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
