//! The host operations of ABI 1.1: linear algebra on views, the exact k-smallest mask and the
//! optimal-brain-surgeon sweep, for methods that reconstruct the weights they keep.

use abi_stable::std_types::{ROption, RResult};
use birdbone_host_api::{self as api, NmPattern, PluginError, TensorId};
use tch::{Kind, Tensor};

use super::{deliver, guard, new_tensor};
use crate::{
    engine,
    error::{HostError, Result},
    tensors::{self, Owner},
};

fn shape_error(op: &'static str, message: String) -> crate::Error {
    HostError::Shape { op, message }.into()
}

/// A 2-D floating-point matrix, as f32 unless it is f64.
fn matrix(op: &'static str, id: TensorId) -> Result<Tensor> {
    let t = tensors::get(id)?;
    if t.dim() != 2 || !t.is_floating_point() {
        return Err(shape_error(
            op,
            format!(
                "needs a 2-D float matrix, got {:?} {:?}",
                t.kind(),
                t.size()
            ),
        ));
    }
    Ok(if t.kind() == Kind::Double {
        t
    } else {
        t.f_to_kind(Kind::Float)?
    })
}

pub(super) extern "C" fn matmul(
    a: TensorId,
    b: TensorId,
    transpose_a: bool,
    transpose_b: bool,
    out: ROption<TensorId>,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let (mut a, mut b) = (matrix("matmul", a)?, matrix("matmul", b)?);
        if transpose_a {
            a = a.f_transpose(0, 1)?;
        }
        if transpose_b {
            b = b.f_transpose(0, 1)?;
        }
        if a.size()[1] != b.size()[0] {
            return Err(shape_error(
                "matmul",
                format!("{:?} @ {:?}", a.size(), b.size()),
            ));
        }
        deliver(a.f_matmul(&b)?, out)
    })
}

pub(super) extern "C" fn cholesky(a: TensorId, upper: bool) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let a = matrix("cholesky", a)?;
        if a.size()[0] != a.size()[1] {
            return Err(shape_error(
                "cholesky",
                format!("needs a square matrix, got {:?}", a.size()),
            ));
        }
        let (factor, info) = a.f_linalg_cholesky_ex(upper, false)?;
        let info = info.int64_value(&[]);
        if info != 0 {
            birdbone_host::bail!(
                "the {n}×{n} matrix is not positive definite (its leading minor of order {info} is not positive): nothing was factored",
                n = a.size()[0]
            );
        }
        // LAPACK writes column-major: rows contiguous is what the sweep and plugins expect.
        new_tensor(factor.f_contiguous()?)
    })
}

pub(super) extern "C" fn cholesky_inverse(
    factor: TensorId,
    upper: bool,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        new_tensor(
            matrix("cholesky_inverse", factor)?
                .f_cholesky_inverse(upper)?
                .f_contiguous()?,
        )
    })
}

pub(super) extern "C" fn solve_triangular(
    a: TensorId,
    b: TensorId,
    upper: bool,
    left: bool,
    unit_diagonal: bool,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let (a, b) = (
            matrix("solve_triangular", a)?,
            matrix("solve_triangular", b)?,
        );
        new_tensor(
            a.f_linalg_solve_triangular(&b, upper, left, unit_diagonal)?
                .f_contiguous()?,
        )
    })
}

/// A view of `x` when the plugin owns it, else a copy (no writable view of a host tensor).
fn view_or_copy(id: TensorId, view: Tensor) -> Result<api::Tensor> {
    if tensors::owned_by_plugin(id)? {
        tensors::register(view, Owner::Plugin)
    } else {
        new_tensor(view.f_detach_copy()?.f_contiguous()?)
    }
}

pub(super) extern "C" fn narrow(
    x: TensorId,
    dim: i64,
    start: i64,
    length: i64,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let t = tensors::get(x)?;
        let dims = t.size();
        let d = if dim < 0 {
            dim + dims.len() as i64
        } else {
            dim
        };
        let ok = (0..dims.len() as i64).contains(&d)
            && start >= 0
            && length >= 0
            && start
                .checked_add(length)
                .is_some_and(|e| e <= dims[d as usize]);
        if !ok {
            return Err(shape_error(
                "narrow",
                format!("elements {start}..{start}+{length} of dimension {dim} of {dims:?}"),
            ));
        }
        view_or_copy(x, t.f_narrow(d, start, length)?)
    })
}

pub(super) extern "C" fn diagonal(x: TensorId) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let t = tensors::get(x)?;
        if t.dim() != 2 {
            return Err(shape_error(
                "diagonal",
                format!("needs a 2-D tensor, got {:?}", t.size()),
            ));
        }
        view_or_copy(x, t.f_diagonal(0, 0, 1)?)
    })
}

/// The `k` smallest elements of `x`, ties by lower flat index (see `HostOps::smallest_mask`):
/// a stable sort, whose order among equal values is the flat order.
fn smallest_mask_of(x: &Tensor, k: u64) -> Result<Tensor> {
    let n = x.numel() as u64;
    if k > n {
        birdbone_host::bail!("smallest_mask: k = {k} of {n} elements");
    }
    let flat = x.f_reshape([-1])?;
    if flat.f_isnan()?.f_any()?.int64_value(&[]) != 0 {
        return Err(HostError::NonFinite {
            what: "value (smallest_mask)",
            param: "a plugin's tensor".into(),
            index: flat.f_isnan()?.f_nonzero()?.int64_value(&[0, 0]) as u64,
        }
        .into());
    }
    let (_, order) = flat.f_sort_stable(true, 0, false)?;
    let mask = flat.f_zeros_like()?.f_to_kind(Kind::Bool)?;
    let taken = order.f_narrow(0, 0, k as i64)?;
    let mask = mask.f_index_fill(0, &taken, 1)?;
    Ok(mask.f_view_as(x)?)
}

pub(super) extern "C" fn smallest_mask(x: TensorId, k: u64) -> RResult<api::Tensor, PluginError> {
    guard(|| new_tensor(smallest_mask_of(&tensors::get(x)?, k)?))
}

pub(super) extern "C" fn obs_sweep(
    w: TensorId,
    hinv: TensorId,
    prune: TensorId,
    nm: ROption<NmPattern>,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let (w, h, p) = (
            tensors::get_writable(w)?,
            tensors::get(hinv)?,
            tensors::get_writable(prune)?,
        );
        new_tensor(obs_sweep_checked(&w, &h, &p, nm.into_option())?)
    })
}

/// The column sweep after checking its operands (see `HostOps::obs_sweep`).
pub(crate) fn obs_sweep_checked(
    w: &Tensor,
    h: &Tensor,
    p: &Tensor,
    nm: Option<NmPattern>,
) -> Result<Tensor> {
    {
        let (rows, b) = match w.size()[..] {
            [r, b] => (r, b),
            _ => return Err(shape_error("obs_sweep", format!("w is {:?}", w.size()))),
        };
        let problems = [
            (w.kind() != Kind::Float, "w must be f32"),
            (w.stride()[1] != 1, "w's rows must be contiguous"),
            (h.kind() != Kind::Float, "hinv must be f32"),
            (h.size() != [b, b], "hinv must be [b, b] for w of [rows, b]"),
            (
                h.dim() == 2 && h.stride()[1] != 1,
                "hinv's rows must be contiguous",
            ),
            (p.kind() != Kind::Bool, "prune must be bool"),
            (p.size() != [rows, b], "prune must have w's shape"),
            (!p.is_contiguous(), "prune must be contiguous"),
            (
                h.device() != w.device() || p.device() != w.device(),
                "w, hinv and prune must be on one device",
            ),
            (
                b as u32 > birdbone_cuda::OBS_MAX_COLS,
                "blocks are at most 256 columns",
            ),
        ];
        if let Some((_, what)) = problems.iter().find(|(bad, _)| *bad) {
            return Err(shape_error(
                "obs_sweep",
                format!(
                    "{what} (w {:?} {:?}, hinv {:?} {:?}, prune {:?} {:?})",
                    w.kind(),
                    w.size(),
                    h.kind(),
                    h.size(),
                    p.kind(),
                    p.size()
                ),
            ));
        }
        let nm = match nm {
            None => None,
            Some(NmPattern { n, m }) => {
                if m == 0 || n > m || m > 32 || b % m as i64 != 0 {
                    birdbone_host::bail!(
                        "obs_sweep: {n}:{m} does not fit blocks of {b} columns (need N <= M <= 32 and M dividing the block)"
                    );
                }
                Some((n, m))
            }
        };
        engine::obs_sweep(w, h, p, nm)
    }
}
