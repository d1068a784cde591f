//! SparseGPT's column sweep (host operation `obs_sweep`) on either device: `birdbone-select`'s
//! `obs::sweep` on the CPU, `birdbone-cuda`'s `obs_sweep` kernel on a GPU, the same operations
//! in the same order. The caller has checked shapes, types and devices.

use birdbone_select::obs::{sweep, SweepBlock};
use tch::{Device, Kind, Tensor};

use crate::error::Result;

/// Sweeps `w` (f32 `[rows, b]`, last dimension contiguous) in place with `hinv` (f32 `[b, b]`,
/// last dimension contiguous) and `prune` (bool `[rows, b]`, contiguous); returns the errors.
pub(crate) fn obs_sweep(
    w: &Tensor,
    hinv: &Tensor,
    prune: &Tensor,
    nm: Option<(u32, u32)>,
) -> Result<Tensor> {
    let (rows, b) = (w.size()[0], w.size()[1]);
    match w.device() {
        Device::Cuda(ordinal) => super::cuda::obs_sweep(ordinal, w, hinv, prune, nm),
        _ => {
            let mut wv = Vec::<f32>::try_from(&w.f_contiguous()?.f_reshape([-1])?)?;
            let hv = Vec::<f32>::try_from(&hinv.f_contiguous()?.f_reshape([-1])?)?;
            let mut pv = Vec::<u8>::try_from(&prune.f_to_kind(Kind::Uint8)?.f_reshape([-1])?)?;
            let mut err = vec![0f32; (rows * b) as usize];
            sweep(SweepBlock {
                w: &mut wv,
                w_stride: b as usize,
                hinv: &hv,
                h_stride: b as usize,
                prune: &mut pv,
                err: &mut err,
                rows: rows as usize,
                b: b as usize,
                nm: nm.map(|(n, m)| (n as usize, m as usize)),
            });
            w.shallow_clone()
                .f_copy_(&Tensor::from_slice(&wv).f_view([rows, b])?)?;
            prune
                .shallow_clone()
                .f_copy_(&Tensor::from_slice(&pv).f_view([rows, b])?)?;
            Ok(Tensor::from_slice(&err).f_view([rows, b])?)
        }
    }
}
