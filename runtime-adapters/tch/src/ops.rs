//! The host operation table ([`HostOps`]) over libtorch. Each function catches panics, runs
//! without autograd, and answers errors as values. The operations of ABI 1.1 (linear algebra,
//! masks, the OBS sweep) are in `linalg`.

mod linalg;
pub(crate) use linalg::obs_sweep_checked;

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    sync::LazyLock,
};

use abi_stable::{
    prefix_type::WithMetadata,
    std_types::{ROption, RResult, RSlice, RVec, Tuple2},
};
use birdbone_host_api::{
    self as api, AbiVersion, BinaryOp, DType, ErrorCode, HostOps, HostOps_Ref, KthValue,
    PluginError, ReduceOp, TensorId, UnaryOp,
};
use birdbone_select::key_value;
use tch::{Kind, Tensor};

use crate::{
    deferred,
    engine::{self, Scores},
    error::{HostError, Result},
    tensors::{self, kind_of, torch_device, Owner},
};

/// Runs a host callback for a plugin: no autograd, errors and panics turned into values. Square
/// roots deferred by earlier calls run first (see `crate::deferred`).
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T>) -> RResult<T, PluginError> {
    guard_deferring(|| {
        deferred::flush()?;
        f()
    })
}

/// `guard` for an operation that may itself be deferred (it flushes when it runs now).
fn guard_deferring<T>(f: impl FnOnce() -> Result<T>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(|| {
        let _g = tch::no_grad_guard();
        f()
    })) {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(e.to_plugin_error()),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            RResult::RErr(PluginError::new(
                ErrorCode::Internal,
                format!("host operation panicked: {msg}"),
            ))
        }
    }
}

fn new_tensor(t: Tensor) -> Result<api::Tensor> {
    tensors::register(t, Owner::Plugin)
}

/// Writes `value` into `out` (a plugin-owned tensor) when given, else registers it as new.
fn deliver(value: Tensor, out: ROption<TensorId>) -> Result<api::Tensor> {
    match out.into_option() {
        None => new_tensor(value),
        Some(id) => {
            let mut dst = tensors::get_writable(id)?;
            dst.f_copy_(&value)?;
            Ok(api::Tensor {
                id,
                view: tensors::view_of(&dst)?,
            })
        }
    }
}

extern "C" fn alloc(
    shape: RSlice<'_, i64>,
    dtype: DType,
    device: api::Device,
    fill: f64,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        new_tensor(Tensor::f_full(
            shape.as_slice(),
            fill,
            (kind_of(dtype), torch_device(device)),
        )?)
    })
}

extern "C" fn release(id: TensorId) -> RResult<(), PluginError> {
    guard(|| tensors::release(id))
}

extern "C" fn unary(
    op: UnaryOp,
    x: TensorId,
    out: ROption<TensorId>,
) -> RResult<api::Tensor, PluginError> {
    guard_deferring(|| {
        let x = tensors::get(x)?;
        if op == UnaryOp::Sqrt && out.is_none() {
            if let Some(y) = deferred::sqrt(&x)? {
                return new_tensor(y);
            }
        }
        deferred::flush()?;
        let y = match op {
            UnaryOp::Abs => x.f_abs()?,
            UnaryOp::Neg => x.f_neg()?,
            UnaryOp::Square => x.f_square()?,
            UnaryOp::Sqrt => x.f_sqrt()?,
            UnaryOp::Exp => x.f_exp()?,
            UnaryOp::Log => x.f_log()?,
            UnaryOp::Sign => x.f_sign()?,
            UnaryOp::Reciprocal => x.f_reciprocal()?,
            UnaryOp::IsFinite => x.f_isfinite()?,
        };
        deliver(y, out)
    })
}

fn binary_tensors(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(match op {
        BinaryOp::Add => a.f_add(b)?,
        BinaryOp::Sub => a.f_sub(b)?,
        BinaryOp::Mul => a.f_mul(b)?,
        BinaryOp::Div => a.f_div(b)?,
        BinaryOp::Max => a.f_maximum(b)?,
        BinaryOp::Min => a.f_minimum(b)?,
        BinaryOp::Lt => a.f_lt_tensor(b)?,
        BinaryOp::Le => a.f_le_tensor(b)?,
        BinaryOp::Gt => a.f_gt_tensor(b)?,
        BinaryOp::Ge => a.f_ge_tensor(b)?,
        BinaryOp::Eq => a.f_eq_tensor(b)?,
        BinaryOp::Ne => a.f_ne_tensor(b)?,
    })
}

extern "C" fn binary(
    op: BinaryOp,
    a: TensorId,
    b: TensorId,
    out: ROption<TensorId>,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        deliver(
            binary_tensors(op, &tensors::get(a)?, &tensors::get(b)?)?,
            out,
        )
    })
}

extern "C" fn binary_scalar(
    op: BinaryOp,
    a: TensorId,
    s: f64,
    out: ROption<TensorId>,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let a = tensors::get(a)?;
        let b = Tensor::f_scalar_tensor(s, (a.kind(), a.device()))?;
        deliver(binary_tensors(op, &a, &b)?, out)
    })
}

extern "C" fn where_select(
    cond: TensorId,
    a: TensorId,
    b: TensorId,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let c = tensors::get(cond)?.f_ne(0)?;
        new_tensor(tensors::get(a)?.f_where_self(&c, &tensors::get(b)?)?)
    })
}

extern "C" fn masked_fill(x: TensorId, mask: TensorId, value: f64) -> RResult<(), PluginError> {
    guard(|| {
        let mut x = tensors::get_writable(x)?;
        let m = tensors::get(mask)?.f_ne(0)?;
        let _ = x.f_masked_fill_(&m, value)?;
        Ok(())
    })
}

extern "C" fn reduce(
    op: ReduceOp,
    x: TensorId,
    dim: ROption<i64>,
    keepdim: bool,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let x = tensors::get(x)?;
        let dims: Option<Vec<i64>> = dim.into_option().map(|d| vec![d]);
        let d = dims.as_deref();
        let float = |t: &Tensor| -> Result<Tensor> {
            Ok(if t.is_floating_point() {
                t.shallow_clone()
            } else {
                t.f_to_kind(Kind::Float)?
            })
        };
        let y = match (op, d) {
            (ReduceOp::Sum, d) => x.f_sum_dim_intlist(d, keepdim, None::<Kind>)?,
            (ReduceOp::Mean, d) => float(&x)?.f_mean_dim(d, keepdim, None::<Kind>)?,
            (ReduceOp::Max, Some(d)) => x.f_amax(d, keepdim)?,
            (ReduceOp::Max, None) => x.f_max()?,
            (ReduceOp::Min, Some(d)) => x.f_amin(d, keepdim)?,
            (ReduceOp::Min, None) => x.f_min()?,
            (ReduceOp::L1Norm, d) => x.f_abs()?.f_sum_dim_intlist(d, keepdim, None::<Kind>)?,
            (ReduceOp::SumSquares, d) => {
                float(&x)?
                    .f_square()?
                    .f_sum_dim_intlist(d, keepdim, None::<Kind>)?
            }
            (ReduceOp::L2Norm, d) => float(&x)?
                .f_square()?
                .f_sum_dim_intlist(d, keepdim, None::<Kind>)?
                .f_sqrt()?,
        };
        new_tensor(y)
    })
}

extern "C" fn cast(x: TensorId, dtype: DType) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let src = tensors::get(x)?;
        let y = src.f_to_kind(kind_of(dtype))?;
        // libtorch returns the input itself when the type already matches; a plugin's new tensor
        // must never share storage with a host tensor it could then write.
        let y = if y.data_ptr() == src.data_ptr() {
            let mut fresh = y.f_empty_like()?;
            fresh.f_copy_(&y)?;
            fresh
        } else {
            y
        };
        new_tensor(y)
    })
}

extern "C" fn copy(src: TensorId, dst: TensorId) -> RResult<(), PluginError> {
    guard(|| {
        let mut d = tensors::get_writable(dst)?;
        let s = tensors::get(src)?;
        if s.size() != d.size() {
            return Err(HostError::Shape {
                op: "copy",
                message: format!("{:?} into {:?}", s.size(), d.size()),
            }
            .into());
        }
        d.f_copy_(&s)?;
        Ok(())
    })
}

extern "C" fn to_host(x: TensorId) -> RResult<RVec<f64>, PluginError> {
    guard(|| {
        let x = tensors::get(x)?
            .f_to_kind(Kind::Double)?
            .f_to_device(tch::Device::Cpu)?
            .f_reshape([-1])?;
        Ok(RVec::from(Vec::<f64>::try_from(&x)?))
    })
}

extern "C" fn from_host(
    data: RSlice<'_, f64>,
    shape: RSlice<'_, i64>,
    dtype: DType,
    device: api::Device,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        let n: i64 = shape.iter().product();
        if n as usize != data.len() {
            return Err(HostError::Shape {
                op: "from_host",
                message: format!("{} values for shape {:?}", data.len(), shape.as_slice()),
            }
            .into());
        }
        let t = Tensor::from_slice(data.as_slice())
            .f_reshape(shape.as_slice())?
            .f_to_kind(kind_of(dtype))?
            .f_to_device(torch_device(device))?;
        new_tensor(t)
    })
}

extern "C" fn histogram(
    x: TensorId,
    bins: u32,
    min: f64,
    max: f64,
) -> RResult<api::Tensor, PluginError> {
    guard(|| {
        if bins == 0 || max.partial_cmp(&min) != Some(std::cmp::Ordering::Greater) {
            birdbone_host::bail!(
                "histogram needs bins > 0 and max > min (got {bins} bins over [{min}, {max}])"
            );
        }
        // histc semantics: values outside [min, max] are ignored; max falls in the last bin.
        let x = tensors::get(x)?.f_to_kind(Kind::Double)?.f_reshape([-1])?;
        let inside = x.f_ge(min)?.f_logical_and(&x.f_le(max)?)?;
        let idx = x
            .f_masked_select(&inside)?
            .f_sub_scalar(min)?
            .f_mul_scalar(bins as f64 / (max - min))?
            .f_floor()?
            .f_clamp(0.0, (bins - 1) as f64)?
            .f_to_kind(Kind::Int64)?;
        new_tensor(
            idx.f_bincount::<Tensor>(None, bins as i64)?
                .f_to_kind(Kind::Float)?,
        )
    })
}

/// The exact k-th smallest over a set of tensors, through the same selection machinery as the
/// pruning pass (so it has no element limit and no sort).
pub(crate) fn kth_of(xs: &[Tensor], k: u64) -> Result<KthValue> {
    let Some(first) = xs.first() else {
        birdbone_host::bail!("kth_value of no tensors")
    };
    if k == 0 {
        birdbone_host::bail!("kth_value counts k from 1");
    }
    let scores: Vec<Scores> = xs
        .iter()
        .map(|x| Ok(Scores::Dense(x.f_to_kind(Kind::Float)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    let mut sel = engine::global_selector(first.device(), k, scores.len())?;
    for (p, s) in scores.iter().enumerate() {
        sel.feed_high(p, s)?;
    }
    if sel.needs_low_pass()? {
        for (p, s) in scores.iter().enumerate() {
            sel.feed_low(p, s)?;
        }
    }
    let g = sel.finish()?;
    let below = g.params.iter().map(|q| q.below).sum();
    let equal = g.params.iter().map(|q| q.ties).sum();
    Ok(KthValue {
        value: key_value(g.threshold) as f64,
        below,
        equal,
    })
}

extern "C" fn kth_value(xs: RSlice<'_, TensorId>, k: u64) -> RResult<KthValue, PluginError> {
    guard(|| {
        let ts: Vec<Tensor> = xs
            .iter()
            .map(|&id| tensors::get(id))
            .collect::<Result<_>>()?;
        kth_of(&ts, k)
    })
}

extern "C" fn kth_along(x: TensorId, k: u64, dim: i64) -> RResult<api::Tensor, PluginError> {
    guard(|| new_tensor(tensors::get(x)?.f_kthvalue(k as i64, dim, false)?.0))
}

extern "C" fn topk(
    x: TensorId,
    k: u64,
    dim: i64,
    largest: bool,
) -> RResult<Tuple2<api::Tensor, api::Tensor>, PluginError> {
    guard(|| {
        let (v, i) = tensors::get(x)?.f_topk(k as i64, dim, largest, true)?;
        Ok(Tuple2(new_tensor(v)?, new_tensor(i)?))
    })
}

static OPS: LazyLock<HostOps_Ref> = LazyLock::new(|| {
    let table = HostOps {
        abi: AbiVersion::CURRENT,
        alloc,
        release,
        unary,
        binary,
        binary_scalar,
        where_select,
        masked_fill,
        reduce,
        cast,
        copy,
        to_host,
        from_host,
        histogram,
        kth_value,
        kth_along,
        topk,
        matmul: linalg::matmul,
        cholesky: linalg::cholesky,
        cholesky_inverse: linalg::cholesky_inverse,
        solve_triangular: linalg::solve_triangular,
        narrow: linalg::narrow,
        diagonal: linalg::diagonal,
        smallest_mask: linalg::smallest_mask,
        obs_sweep: linalg::obs_sweep,
    };
    let leaked: &'static WithMetadata<HostOps> = Box::leak(Box::new(WithMetadata::new(table)));
    HostOps_Ref(leaked.static_as_prefix())
});

/// The host operation table handed to plugins.
pub fn host_ops() -> HostOps_Ref {
    *OPS
}
