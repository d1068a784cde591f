use abi_stable::{
    std_types::{ROption, RResult, RSlice, RVec, Tuple2},
    StableAbi,
};

use crate::{
    error::PluginError,
    plan::NmPattern,
    tensor::{DType, Device, Tensor, TensorId},
    version::AbiVersion,
};

/// Elementwise functions of one tensor.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `|x|`
    Abs,
    /// `-x`
    Neg,
    /// `x²`
    Square,
    /// `√x`
    Sqrt,
    /// `eˣ`
    Exp,
    /// `ln x`
    Log,
    /// `-1`, `0` or `1`
    Sign,
    /// `1 / x`
    Reciprocal,
    /// 1 where `x` is finite, else 0 (bool result).
    IsFinite,
}

/// Elementwise functions of two tensors (broadcasting as NumPy does) or of a tensor and a
/// scalar. Comparisons give bool tensors.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
    /// `max(a, b)`
    Max,
    /// `min(a, b)`
    Min,
    /// `a < b`
    Lt,
    /// `a <= b`
    Le,
    /// `a > b`
    Gt,
    /// `a >= b`
    Ge,
    /// `a == b`
    Eq,
    /// `a != b`
    Ne,
}

/// Reductions over one dimension or the whole tensor.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    /// Σ x
    Sum,
    /// mean of x
    Mean,
    /// max x
    Max,
    /// min x
    Min,
    /// Σ |x|
    L1Norm,
    /// √Σ x²
    L2Norm,
    /// Σ x²
    SumSquares,
}

/// The exact k-th smallest value of a set of tensors, and how it splits ties.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct KthValue {
    /// The k-th smallest value (k counted from 1).
    pub value: f64,
    /// Elements strictly smaller than `value`.
    pub below: u64,
    /// Elements equal to `value`.
    pub equal: u64,
}

/// The host's tensor operations, for plugins that compute scores or masks of their own. Every
/// function works on CPU and CUDA tensors and runs on the tensors' device (on libtorch's
/// current stream for that device); none copies a weight. Each result is ready for every later
/// host operation. Within a batch of scorer calls the host may run the square roots of small
/// CUDA tensors (`unary` `Sqrt` without `out`) together, later: a plugin that reads a result's
/// memory with device code of its own calls any host operation first.
///
/// Arguments are ids of tensors the caller may use: borrowed inputs of the current call or
/// tensors it owns. Results are new tensors owned by the caller. Functions that write (`out`
/// arguments, [`HostOps::masked_fill`], [`HostOps::copy`]) accept only tensors the caller owns:
/// a plugin cannot modify a weight through this table.
///
/// This is a prefix type: the version comes first, so a plugin can read it before touching any
/// function, and later minors append functions (read them through their `Option` getters).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostOps_Ref)))]
#[sabi(missing_field(option))]
pub struct HostOps {
    /// The ABI version of this table.
    pub abi: AbiVersion,
    /// A new tensor filled with `fill`.
    pub alloc: extern "C" fn(
        shape: RSlice<'_, i64>,
        dtype: DType,
        device: Device,
        fill: f64,
    ) -> RResult<Tensor, PluginError>,
    /// Gives back a tensor the caller owns. Releasing an id twice is an `InvalidArgument` error.
    pub release: extern "C" fn(id: TensorId) -> RResult<(), PluginError>,
    /// `op(x)`, into `out` when given (which may be `x` itself).
    pub unary: extern "C" fn(
        op: UnaryOp,
        x: TensorId,
        out: ROption<TensorId>,
    ) -> RResult<Tensor, PluginError>,
    /// `op(a, b)`, into `out` when given (which may be `a` itself: `acc += x`).
    pub binary: extern "C" fn(
        op: BinaryOp,
        a: TensorId,
        b: TensorId,
        out: ROption<TensorId>,
    ) -> RResult<Tensor, PluginError>,
    /// `op(a, scalar)`, into `out` when given.
    pub binary_scalar: extern "C" fn(
        op: BinaryOp,
        a: TensorId,
        scalar: f64,
        out: ROption<TensorId>,
    ) -> RResult<Tensor, PluginError>,
    /// `cond ? a : b`, elementwise.
    pub where_select:
        extern "C" fn(cond: TensorId, a: TensorId, b: TensorId) -> RResult<Tensor, PluginError>,
    /// Sets `x` to `value` where `mask` is nonzero, in place.
    pub masked_fill:
        extern "C" fn(x: TensorId, mask: TensorId, value: f64) -> RResult<(), PluginError>,
    /// Reduces over `dim`, or over everything when `dim` is none.
    pub reduce: extern "C" fn(
        op: ReduceOp,
        x: TensorId,
        dim: ROption<i64>,
        keepdim: bool,
    ) -> RResult<Tensor, PluginError>,
    /// Converts to another element type.
    pub cast: extern "C" fn(x: TensorId, dtype: DType) -> RResult<Tensor, PluginError>,
    /// Copies `src` into `dst` (same shape, any dtypes).
    pub copy: extern "C" fn(src: TensorId, dst: TensorId) -> RResult<(), PluginError>,
    /// The elements, row-major, as f64 in host memory.
    pub to_host: extern "C" fn(x: TensorId) -> RResult<RVec<f64>, PluginError>,
    /// A new tensor of `shape` and `dtype` on `device` holding `data` (row-major).
    pub from_host: extern "C" fn(
        data: RSlice<'_, f64>,
        shape: RSlice<'_, i64>,
        dtype: DType,
        device: Device,
    ) -> RResult<Tensor, PluginError>,
    /// Counts of `x` in `bins` equal-width bins over `[min, max]`, as an f32 `[bins]` tensor.
    pub histogram:
        extern "C" fn(x: TensorId, bins: u32, min: f64, max: f64) -> RResult<Tensor, PluginError>,
    /// The exact k-th smallest element over a set of float tensors (k from 1).
    pub kth_value:
        extern "C" fn(xs: RSlice<'_, TensorId>, k: u64) -> RResult<KthValue, PluginError>,
    /// The k-th smallest along `dim` (k from 1): one value per slice, `dim` removed.
    pub kth_along: extern "C" fn(x: TensorId, k: u64, dim: i64) -> RResult<Tensor, PluginError>,
    /// The `k` largest (or smallest) along `dim`: values and i64 indices.
    ///
    /// This is the last field of ABI 1.0; fields added in later minors go below it.
    #[sabi(last_prefix_field)]
    pub topk: extern "C" fn(
        x: TensorId,
        k: u64,
        dim: i64,
        largest: bool,
    ) -> RResult<Tuple2<Tensor, Tensor>, PluginError>,

    // ---- ABI 1.1: linear algebra for methods that reconstruct weights (SparseGPT). Read
    // through the `Option` getters (`ops.matmul()`): a 1.0 host has none of them. Matrices are
    // 2-D floating-point tensors; results are new f32 tensors unless said otherwise.
    //
    /// `op(a) @ op(b)`, `op` transposing when asked; into `out` when given (which may be a view
    /// of a tensor the caller owns, so `W[:, j:] -= E @ H` is `matmul` into a scratch and a
    /// `binary` Sub into the view). Capability `ops.linalg`.
    pub matmul: extern "C" fn(
        a: TensorId,
        b: TensorId,
        transpose_a: bool,
        transpose_b: bool,
        out: ROption<TensorId>,
    ) -> RResult<Tensor, PluginError>,
    /// The Cholesky factor of a symmetric positive-definite matrix, lower (`L Lᵀ = A`) or upper
    /// (`Uᵀ U = A`). A matrix that is not positive definite is an `InvalidArgument` error
    /// naming the first failing leading minor; nothing is returned. Capability `ops.linalg`.
    pub cholesky: extern "C" fn(a: TensorId, upper: bool) -> RResult<Tensor, PluginError>,
    /// `A⁻¹` from the Cholesky factor of `A` (lower unless `upper`). Capability `ops.linalg`.
    pub cholesky_inverse:
        extern "C" fn(factor: TensorId, upper: bool) -> RResult<Tensor, PluginError>,
    /// `X` with `A X = B` (`left`) or `X A = B`, for a triangular `A` (upper or lower, with a
    /// unit diagonal when `unit_diagonal`). Capability `ops.linalg`.
    pub solve_triangular: extern "C" fn(
        a: TensorId,
        b: TensorId,
        upper: bool,
        left: bool,
        unit_diagonal: bool,
    ) -> RResult<Tensor, PluginError>,
    /// Elements `start..start + length` along `dim`. A **view** when the caller owns `x`
    /// (writes through it change `x`; releasing it does not release `x`), else a copy: a
    /// plugin never gets a writable view of a host tensor. Capability `ops.linalg`.
    pub narrow: extern "C" fn(
        x: TensorId,
        dim: i64,
        start: i64,
        length: i64,
    ) -> RResult<Tensor, PluginError>,
    /// The main diagonal of a 2-D tensor (`[min(rows, cols)]`): a view when the caller owns `x`
    /// (`H[i][i] += d` is a `binary_scalar` into it), else a copy. Capability `ops.linalg`.
    pub diagonal: extern "C" fn(x: TensorId) -> RResult<Tensor, PluginError>,
    /// A bool tensor of `x`'s shape, true at exactly the `k` smallest elements of `x`; among
    /// equal values the lower flat (row-major) index is taken first. NaN anywhere is a
    /// `NonFinite` error. Capability `ops.select-mask`.
    pub smallest_mask: extern "C" fn(x: TensorId, k: u64) -> RResult<Tensor, PluginError>,
    /// The optimal-brain-surgeon column sweep of SparseGPT over one block of columns, each row
    /// on its own, in place. `w`: f32 `[rows, B]` the caller owns (a view is fine; the last
    /// dimension contiguous). `hinv`: f32 `[B, B]`, the block of the upper Cholesky factor of
    /// `H⁻¹`. `prune`: a bool `[rows, B]` the caller owns, contiguous. For each column `i` in
    /// order, every row does:
    ///
    /// - with `nm = n:m` and `i % m == 0`: marks in `prune` the `m - n` columns of `i..i+m` with
    ///   the smallest `w[j]² / hinv[j][j]²` (the current, already updated `w`; ties: lower
    ///   column first). Without `nm`, `prune` is read as given;
    /// - `e = (w[i] - q) / hinv[i][i]` with `q = 0` where pruned, else `w[i]`;
    /// - `w[j] -= e · hinv[i][j]` for every `j > i` (product and difference each rounded, as an
    ///   outer product followed by a subtraction rounds them), then `w[i] = q`.
    ///
    /// Returns the errors `e`, a new f32 `[rows, B]` (for the lazy update of the columns after
    /// the block: `W[:, after] -= E @ Hinv[block, after]`). Capability `ops.obs-sweep`.
    pub obs_sweep: extern "C" fn(
        w: TensorId,
        hinv: TensorId,
        prune: TensorId,
        nm: ROption<NmPattern>,
    ) -> RResult<Tensor, PluginError>,
}
