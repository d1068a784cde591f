//! Finiteness checks and masks applied to weights.

use birdbone_cuda::{Dt, Seg};
use tch::{Kind, Tensor};

use super::*;

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
        g.find_non_finite(
            dt,
            false,
            Segs(t.segs),
            Chunks(t.chunks),
            t.nchunks,
            FirstBad(ptr(first)),
        )?;
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
        g.apply_mask(
            dt,
            Segs(t.segs),
            Chunks(t.chunks),
            t.nchunks,
            Pruned(ptr(&pruned)),
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
