//! Exact selection and in-place pruning on whatever device the weights live: the CPU path runs
//! `birdbone-select` on host memory, the CUDA path runs `birdbone-cuda`'s kernels on device
//! memory, and both follow the same rules bit for bit.

mod cpu;
mod cuda;

use birdbone_select::{mask_bytes, GlobalSelection, ParamQuota};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};

/// How the host evaluates one parameter's scores.
pub(crate) enum Scores {
    /// `|w|`, or `|w[i][j]| * scale[j]` in f32, computed where it is used.
    Magnitude {
        /// The weight (the model's own tensor).
        weight: Tensor,
        /// f32 `[cols]`, contiguous, on the weight's device.
        scale: Option<Tensor>,
    },
    /// A score tensor (f32, f16 or bf16, contiguous, the weight's element count).
    Dense(Tensor),
}

impl Scores {
    pub fn tensor(&self) -> &Tensor {
        match self {
            Scores::Magnitude { weight, .. } => weight,
            Scores::Dense(t) => t,
        }
    }
    pub fn device(&self) -> Device {
        self.tensor().device()
    }
    pub fn numel(&self) -> u64 {
        self.tensor().numel() as u64
    }
    /// The last dimension (the row length of a Linear weight).
    pub fn cols(&self) -> u64 {
        self.tensor().size().last().copied().unwrap_or(1).max(1) as u64
    }
    /// The scores as a dense f32 tensor of the weight's shape, computed the way the selection
    /// kernels compute them (so the values are bit-identical).
    pub fn materialize(&self) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        Ok(match self {
            Scores::Magnitude {
                weight,
                scale: None,
            } => weight.f_abs()?.f_to_kind(Kind::Float)?,
            Scores::Magnitude {
                weight,
                scale: Some(s),
            } => weight.f_abs()?.f_to_kind(Kind::Float)?.f_mul(s)?,
            Scores::Dense(t) => t.f_to_kind(Kind::Float)?,
        })
    }
}

/// What to prune in one parameter.
pub(crate) enum Rule {
    /// Below the threshold key, plus the first `take` ties (a global or per-parameter selection).
    Threshold(ParamQuota),
    /// One threshold per row.
    PerRow(RowSel),
    /// Keep `n` of every `m`.
    NM { n: u32, m: u32 },
}

/// Per-row thresholds, on the weight's device: threshold keys and ties to prune, both
/// `[rows]` int32 (the keys' bit patterns).
pub(crate) struct RowSel {
    pub keys: Tensor,
    pub take: Tensor,
}

/// A streaming global selection (see `birdbone_select::GlobalSelector`).
pub(crate) trait GlobalSel {
    fn feed_high(&mut self, p: usize, scores: &Scores) -> Result<()>;
    fn needs_low_pass(&mut self) -> Result<bool>;
    fn feed_low(&mut self, p: usize, scores: &Scores) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<GlobalSelection>;
}

/// A selector for `k` weights over `params` parameters on `device`.
pub(crate) fn global_selector(device: Device, k: u64, params: usize) -> Result<Box<dyn GlobalSel>> {
    match device {
        Device::Cuda(i) => cuda::global_selector(i, k, params),
        _ => Ok(Box::new(cpu::CpuGlobal::new(k, params))),
    }
}

/// Per-row thresholds for pruning `k` weights of every row.
pub(crate) fn select_per_row(scores: &Scores, k: u64) -> Result<RowSel> {
    match scores.device() {
        Device::Cuda(_) => cuda::select_per_row(scores, k),
        _ => cpu::select_per_row(scores, k),
    }
}

/// The bit mask (1 = keep; `birdbone_select::BitMask` layout, as a u8 tensor on the scores'
/// device) that `rule` gives, and how many weights it prunes.
pub(crate) fn build_mask(scores: &Scores, rule: &Rule) -> Result<(Tensor, u64)> {
    match scores.device() {
        Device::Cuda(_) => cuda::build_mask(scores, rule),
        _ => cpu::build_mask(scores, rule),
    }
}

/// Whether every element is finite; the flat index of one that is not.
pub(crate) fn find_non_finite(t: &Tensor) -> Result<Option<u64>> {
    match t.device() {
        Device::Cuda(_) => cuda::find_non_finite(t),
        _ => cpu::find_non_finite(t),
    }
}

/// Zeroes, in place, the weights whose mask bit is 0. Returns how many.
pub(crate) fn apply_mask(weight: &Tensor, mask: &Tensor) -> Result<u64> {
    check_mask(weight, mask)?;
    match weight.device() {
        Device::Cuda(_) => cuda::apply_mask(weight, mask),
        _ => cpu::apply_mask(weight, mask),
    }
}

/// Applies `rule` to `weight` in place, evaluating `scores` as it goes (one read and one write
/// of the weight on CUDA), and returns the mask when asked for it, with the count pruned.
pub(crate) fn prune_in_place(
    weight: &Tensor,
    scores: &Scores,
    rule: &Rule,
    want_mask: bool,
) -> Result<(Option<Tensor>, u64)> {
    match weight.device() {
        Device::Cuda(_) => cuda::prune_in_place(weight, scores, rule, want_mask),
        _ => {
            let (mask, pruned) = cpu::build_mask(scores, rule)?;
            cpu::apply_mask(weight, &mask)?;
            Ok((want_mask.then_some(mask), pruned))
        }
    }
}

fn check_mask(weight: &Tensor, mask: &Tensor) -> Result<()> {
    let need = mask_bytes(weight.numel()) as i64;
    if mask.kind() != Kind::Uint8 || mask.numel() as i64 != need || mask.device() != weight.device()
    {
        return Err(Error::Shape {
            op: "apply mask",
            message: format!(
                "mask of {} {:?} bytes on {:?} does not fit a weight of {} elements on {:?} (needs {need} u8)",
                mask.numel(),
                mask.kind(),
                mask.device(),
                weight.numel(),
                weight.device()
            ),
        });
    }
    Ok(())
}

/// Packs a bool/u8 keep-tensor (nonzero = keep) into the bit-mask layout, on its device.
pub(crate) fn pack_keep(keep: &Tensor) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let n = keep.numel() as i64;
    let padded = mask_bytes(n as usize) as i64 * 8;
    let flat = keep.f_reshape([-1])?.f_ne(0)?.f_to_kind(Kind::Uint8)?;
    let flat = if padded > n {
        flat.f_constant_pad_nd([0, padded - n])?
    } else {
        flat
    };
    let weights =
        Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).f_to_device(keep.device())?;
    Ok(flat.f_view([-1, 8])?.f_mul(&weights)?.f_sum_dim_intlist(
        Some(&[1i64][..]),
        false,
        Kind::Uint8,
    )?)
}

/// Unpacks a bit mask into a bool tensor of `numel` (true = keep), on its device.
pub(crate) fn unpack_keep(mask: &Tensor, numel: i64) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let bits = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).f_to_device(mask.device())?;
    let expanded = mask
        .f_view([-1, 1])?
        .f_bitwise_and_tensor(&bits)?
        .f_ne(0)?
        .f_reshape([-1])?;
    Ok(expanded.f_narrow(0, 0, numel)?)
}
