//! Exact selection, the way Birdbone defines it, on host memory.
//!
//! Every score becomes a 32-bit *key* whose unsigned order is the order of the score's f32
//! value ([`key_of`]). Selecting the `k` lowest-scoring weights of a scope means: prune every
//! weight whose key is below the threshold key `T`, plus the first `q` weights whose key equals
//! `T`, counting in scope order (parameters in the order given, then flat row-major index). So
//! exactly `k` are pruned, and the choice among equal scores is deterministic.
//!
//! The CUDA kernels in `birdbone-cuda` implement the same rules; tests compare their masks with
//! these bit for bit.

mod keys;
mod mask;
pub mod obs;
mod select;

pub use keys::{key_of, key_value, Elems, ScoreSource};
pub use mask::{mask_bytes, zero_pruned, BitMask, ElemsMut};
pub use select::{
    apply_nm, apply_per_row, apply_threshold, select_global, select_per_row, GlobalSelection,
    GlobalSelector, ParamQuota, RowThresholds, SelectError,
};
