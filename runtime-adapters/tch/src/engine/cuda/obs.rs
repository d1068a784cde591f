//! The column sweep's launch: one thread per row, on libtorch's current stream.

use birdbone_cuda::{SweepErr, SweepHinv, SweepPrune, SweepW};

use super::*;

pub(crate) fn obs_sweep(
    ordinal: usize,
    w: &Tensor,
    hinv: &Tensor,
    prune: &Tensor,
    nm: Option<(u32, u32)>,
) -> Result<Tensor> {
    let (rows, b) = (w.size()[0], w.size()[1]);
    let err = Tensor::f_empty([rows, b], (Kind::Float, w.device()))?;
    gpu(ordinal)?.obs_sweep(
        SweepW(ptr(w)),
        w.stride()[0] as u64,
        SweepHinv(ptr(hinv)),
        hinv.stride()[0] as u64,
        SweepPrune(ptr(prune)),
        SweepErr(ptr(&err)),
        rows as u32,
        b as u32,
        nm,
    )?;
    Ok(err)
}
