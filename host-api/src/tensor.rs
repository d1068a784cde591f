use std::ffi::c_void;

use abi_stable::StableAbi;

/// Most dimensions a [`TensorView`] describes. Weights are 2-D; convolutions are 4-D.
pub const MAX_DIMS: usize = 8;

/// Element type of a tensor (DLPack's type codes, as a closed set).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16: the top half of a binary32.
    BF16,
    /// IEEE binary64.
    F64,
    /// Unsigned byte.
    U8,
    /// Signed byte.
    I8,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// One byte per element, 0 or 1.
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 | DType::I8 | DType::Bool => 1,
        }
    }
    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }
}

/// Where a tensor's memory lives.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// Host memory.
    Cpu,
    /// CUDA device memory.
    Cuda,
}

/// A device: kind and ordinal (0 for the CPU).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Device {
    /// CPU or CUDA.
    pub kind: DeviceKind,
    /// The CUDA ordinal; 0 for the CPU.
    pub index: u32,
}

impl Device {
    /// The CPU.
    pub const CPU: Device = Device {
        kind: DeviceKind::Cpu,
        index: 0,
    };
    /// CUDA device `index`.
    pub const fn cuda(index: u32) -> Device {
        Device {
            kind: DeviceKind::Cuda,
            index,
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda => write!(f, "cuda:{}", self.index),
        }
    }
}

/// A host-issued tensor handle. Ids are never reused within a process; `0` is never issued.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(pub u64);

/// A DLPack-shaped description of a tensor's memory: it says where the elements are, it owns
/// nothing. The host (libtorch) owns the storage.
///
/// Element `(i0, i1, ...)` lives at byte
/// `data + byte_offset + (i0 * strides[0] + i1 * strides[1] + ...) * dtype.size()`.
/// Entries of `shape` and `strides` beyond `ndim` are zero.
///
/// For a CUDA tensor `data` is a device pointer: dereferencing it on the CPU is undefined. The
/// pointer stays valid as long as the [`Tensor`] it came with (see the crate docs on
/// ownership); a plugin must not write through it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct TensorView {
    /// Start of the storage (DLPack `data`).
    pub data: *mut c_void,
    /// Bytes from `data` to the first element.
    pub byte_offset: u64,
    /// Element type.
    pub dtype: DType,
    /// Where the memory lives.
    pub device: Device,
    /// Number of dimensions, at most [`MAX_DIMS`].
    pub ndim: u32,
    /// Size of each dimension.
    pub shape: [i64; MAX_DIMS],
    /// Stride of each dimension, in elements (DLPack's convention).
    pub strides: [i64; MAX_DIMS],
}

// SAFETY: a view only describes memory the host owns; nothing in this crate dereferences
// `data`, and a plugin reaches the elements through the host's operations, which are
// thread-safe. Sending or sharing the description is as safe as sending an integer.
unsafe impl Send for TensorView {}
// SAFETY: as above.
unsafe impl Sync for TensorView {}

impl TensorView {
    /// The used part of `shape`.
    pub fn dims(&self) -> &[i64] {
        &self.shape[..self.ndim as usize]
    }
    /// The used part of `strides`.
    pub fn stride_slice(&self) -> &[i64] {
        &self.strides[..self.ndim as usize]
    }
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.dims().iter().map(|&d| d as u64).product()
    }
    /// Whether the elements are dense and row-major.
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1i64;
        for (&size, &stride) in self.dims().iter().zip(self.stride_slice()).rev() {
            if size != 1 && stride != expected {
                return false;
            }
            expected *= size;
        }
        true
    }
}

/// A tensor across the boundary: the host's handle plus a view of its memory.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Tensor {
    /// The handle host operations take.
    pub id: TensorId,
    /// Where the elements are.
    pub view: TensorView,
}

impl Tensor {
    /// Shape.
    pub fn dims(&self) -> &[i64] {
        self.view.dims()
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.view.dtype
    }
    /// Device.
    pub fn device(&self) -> Device {
        self.view.device
    }
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.view.numel()
    }
}
