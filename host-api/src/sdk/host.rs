use abi_stable::std_types::{RNone, ROption, RSome};

use crate::{
    BinaryOp, DType, Device, HostOps_Ref, KthValue, PluginError, ReduceOp, Tensor, TensorId,
    UnaryOp,
};

/// Anything that names a host tensor.
pub trait AsTensorId {
    /// The id.
    fn tensor_id(&self) -> TensorId;
}

impl AsTensorId for TensorId {
    fn tensor_id(&self) -> TensorId {
        *self
    }
}

impl AsTensorId for Tensor {
    fn tensor_id(&self) -> TensorId {
        self.id
    }
}

impl AsTensorId for OwnedTensor {
    fn tensor_id(&self) -> TensorId {
        self.tensor.id
    }
}

impl<T: AsTensorId + ?Sized> AsTensorId for &T {
    fn tensor_id(&self) -> TensorId {
        (**self).tensor_id()
    }
}

/// A tensor the plugin owns: released through the host when dropped.
pub struct OwnedTensor {
    tensor: Tensor,
    ops: HostOps_Ref,
}

impl OwnedTensor {
    /// The tensor (id and view).
    pub fn tensor(&self) -> &Tensor {
        &self.tensor
    }
    /// Shape.
    pub fn dims(&self) -> &[i64] {
        self.tensor.dims()
    }
    /// Gives up ownership, for returning the tensor to the host (in a `ScoreOut`, say).
    pub fn into_raw(self) -> Tensor {
        let t = self.tensor;
        std::mem::forget(self);
        t
    }
}

impl std::fmt::Debug for OwnedTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedTensor")
            .field("tensor", &self.tensor)
            .finish()
    }
}

impl Drop for OwnedTensor {
    fn drop(&mut self) {
        // A failed release means the id was already gone: nothing is left to free.
        let _ = (self.ops.release())(self.tensor.id);
    }
}

/// Safe access to the host's tensor operations ([`crate::HostOps`]). Cheap to copy.
#[derive(Clone, Copy)]
pub struct Host {
    ops: HostOps_Ref,
}

impl Host {
    /// Wraps the table the host passed at creation.
    pub fn new(ops: HostOps_Ref) -> Host {
        Host { ops }
    }

    /// The raw table, for functions added in later minors.
    pub fn ops(&self) -> HostOps_Ref {
        self.ops
    }

    /// Takes ownership of a tensor a raw host function returned.
    pub fn own(&self, tensor: Tensor) -> OwnedTensor {
        OwnedTensor {
            tensor,
            ops: self.ops,
        }
    }

    fn owned(
        &self,
        r: abi_stable::std_types::RResult<Tensor, PluginError>,
    ) -> Result<OwnedTensor, PluginError> {
        r.into_result().map(|t| self.own(t))
    }

    /// A new tensor filled with `fill`.
    pub fn full(
        &self,
        shape: &[i64],
        dtype: DType,
        device: Device,
        fill: f64,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.alloc())(shape.into(), dtype, device, fill))
    }

    /// A new zero tensor.
    pub fn zeros(
        &self,
        shape: &[i64],
        dtype: DType,
        device: Device,
    ) -> Result<OwnedTensor, PluginError> {
        self.full(shape, dtype, device, 0.0)
    }

    /// `op(x)` as a new tensor.
    pub fn unary(&self, op: UnaryOp, x: impl AsTensorId) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.unary())(op, x.tensor_id(), RNone))
    }

    /// `x = op(x)` on a tensor the plugin owns.
    pub fn unary_inplace(&self, op: UnaryOp, x: &OwnedTensor) -> Result<(), PluginError> {
        (self.ops.unary())(op, x.tensor_id(), RSome(x.tensor_id()))
            .into_result()
            .map(drop)
    }

    /// `op(a, b)` as a new tensor, broadcasting.
    pub fn binary(
        &self,
        op: BinaryOp,
        a: impl AsTensorId,
        b: impl AsTensorId,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.binary())(op, a.tensor_id(), b.tensor_id(), RNone))
    }

    /// `acc = op(acc, b)` on a tensor the plugin owns (`acc += b` with `BinaryOp::Add`).
    pub fn binary_inplace(
        &self,
        op: BinaryOp,
        acc: &OwnedTensor,
        b: impl AsTensorId,
    ) -> Result<(), PluginError> {
        let id = acc.tensor_id();
        (self.ops.binary())(op, id, b.tensor_id(), RSome(id))
            .into_result()
            .map(drop)
    }

    /// `op(a, scalar)` as a new tensor.
    pub fn scalar(
        &self,
        op: BinaryOp,
        a: impl AsTensorId,
        scalar: f64,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.binary_scalar())(op, a.tensor_id(), scalar, RNone))
    }

    /// `acc = op(acc, scalar)` on a tensor the plugin owns.
    pub fn scalar_inplace(
        &self,
        op: BinaryOp,
        acc: &OwnedTensor,
        scalar: f64,
    ) -> Result<(), PluginError> {
        let id = acc.tensor_id();
        (self.ops.binary_scalar())(op, id, scalar, RSome(id))
            .into_result()
            .map(drop)
    }

    /// `|x|`.
    pub fn abs(&self, x: impl AsTensorId) -> Result<OwnedTensor, PluginError> {
        self.unary(UnaryOp::Abs, x)
    }

    /// `a * b`.
    pub fn mul(&self, a: impl AsTensorId, b: impl AsTensorId) -> Result<OwnedTensor, PluginError> {
        self.binary(BinaryOp::Mul, a, b)
    }

    /// `cond ? a : b`.
    pub fn where_select(
        &self,
        cond: impl AsTensorId,
        a: impl AsTensorId,
        b: impl AsTensorId,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.where_select())(
            cond.tensor_id(),
            a.tensor_id(),
            b.tensor_id(),
        ))
    }

    /// Sets `x` to `value` where `mask` is nonzero.
    pub fn masked_fill(
        &self,
        x: &OwnedTensor,
        mask: impl AsTensorId,
        value: f64,
    ) -> Result<(), PluginError> {
        (self.ops.masked_fill())(x.tensor_id(), mask.tensor_id(), value).into_result()
    }

    /// A reduction over `dim`, or over everything.
    pub fn reduce(
        &self,
        op: ReduceOp,
        x: impl AsTensorId,
        dim: Option<i64>,
        keepdim: bool,
    ) -> Result<OwnedTensor, PluginError> {
        let dim: ROption<i64> = dim.into();
        self.owned((self.ops.reduce())(op, x.tensor_id(), dim, keepdim))
    }

    /// Conversion to `dtype`.
    pub fn cast(&self, x: impl AsTensorId, dtype: DType) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.cast())(x.tensor_id(), dtype))
    }

    /// Copies `src` into `dst`.
    pub fn copy_into(&self, src: impl AsTensorId, dst: &OwnedTensor) -> Result<(), PluginError> {
        (self.ops.copy())(src.tensor_id(), dst.tensor_id()).into_result()
    }

    /// The elements, row-major, in host memory.
    pub fn to_vec(&self, x: impl AsTensorId) -> Result<Vec<f64>, PluginError> {
        (self.ops.to_host())(x.tensor_id())
            .into_result()
            .map(|v| v.into_vec())
    }

    /// A new tensor holding `data`.
    pub fn from_slice(
        &self,
        data: &[f64],
        shape: &[i64],
        dtype: DType,
        device: Device,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.from_host())(
            data.into(),
            shape.into(),
            dtype,
            device,
        ))
    }

    /// Equal-width histogram counts (f32 `[bins]`).
    pub fn histogram(
        &self,
        x: impl AsTensorId,
        bins: u32,
        min: f64,
        max: f64,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.histogram())(x.tensor_id(), bins, min, max))
    }

    /// The exact k-th smallest element over several tensors (k from 1).
    pub fn kth_value(&self, xs: &[TensorId], k: u64) -> Result<KthValue, PluginError> {
        (self.ops.kth_value())(xs.into(), k).into_result()
    }

    /// The k-th smallest along `dim` (k from 1).
    pub fn kth_along(
        &self,
        x: impl AsTensorId,
        k: u64,
        dim: i64,
    ) -> Result<OwnedTensor, PluginError> {
        self.owned((self.ops.kth_along())(x.tensor_id(), k, dim))
    }

    /// Top-k values and indices along `dim`.
    pub fn topk(
        &self,
        x: impl AsTensorId,
        k: u64,
        dim: i64,
        largest: bool,
    ) -> Result<(OwnedTensor, OwnedTensor), PluginError> {
        let pair = (self.ops.topk())(x.tensor_id(), k, dim, largest).into_result()?;
        Ok((self.own(pair.0), self.own(pair.1)))
    }
}
