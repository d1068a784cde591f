use abi_stable::{
    std_types::{ROption, RString, RVec},
    StableAbi,
};

use crate::{
    manifest::Granularity,
    tensor::{DType, Device, Tensor},
};

/// What the host knows of a parameter's place in the model.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct ParamRole {
    /// Index of the decoder block it belongs to, when the name says so (`model.layers.3.…`).
    pub layer: ROption<u32>,
    /// Its kind, from the name (`q_proj`, `down_proj`, ...); empty when unknown.
    pub kind: RString,
}

/// A parameter selected for pruning.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Position in this pass's parameter list; what [`crate::PlanContext`] methods take.
    pub index: u32,
    /// Full name in the model (`model.layers.0.self_attn.q_proj.weight`).
    pub name: RString,
    /// Where it sits in the model.
    pub role: ParamRole,
    /// Shape; `[out_features, in_features]` for a Linear weight.
    pub shape: RVec<i64>,
    /// Number of elements.
    pub numel: u64,
    /// Element type of the weight.
    pub dtype: DType,
    /// Where the weight lives.
    pub device: Device,
}

/// The tensors a scorer sees for one parameter. All are borrowed for the duration of the call:
/// do not store them and never write through them.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct ScoreInputs {
    /// The weight itself.
    pub weight: Tensor,
    /// The gradient of the loss with respect to the weight, when the host has one.
    pub grad: ROption<Tensor>,
    /// Per-input-channel sums of squared activations, f32 `[in_features]`, when collected.
    /// `‖X_j‖₂ = sqrt(act_sq_sums[j])`.
    pub act_sq_sums: ROption<Tensor>,
    /// How many input rows (tokens) the statistics summed over; 0 without statistics.
    pub act_tokens: u64,
}

/// What a strategy wants scored.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreRequest {
    /// `Unstructured`: one score per weight (the weight's shape). `Rows`: one per output row
    /// (`[out]`). `Columns`: one per input column (`[in]`). `NM` is not a score granularity.
    pub granularity: Granularity,
}

impl ScoreRequest {
    /// One score per weight.
    pub const ELEMENTS: ScoreRequest = ScoreRequest {
        granularity: Granularity::Unstructured,
    };
}

/// A scorer's answer. Larger scores mean more important: the smallest are pruned first.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub enum ScoreOut {
    /// `score[i][j] = |W[i][j]| * column_scale[j]` (or `|W[i][j]|` without a scale), evaluated
    /// by the host inside its selection and apply kernels: no score tensor is ever materialised,
    /// and the product is rounded to f32 exactly as written, so CPU and GPU agree bit for bit.
    /// Only for [`Granularity::Unstructured`] requests. `column_scale` is an f32 `[in]` tensor
    /// whose ownership moves to the host; it must be finite and non-negative.
    Magnitude {
        /// The per-input-column factor (Wanda's `‖X_j‖₂`), or none for plain magnitude.
        column_scale: ROption<Tensor>,
    },
    /// A score tensor of the requested shape (f32, f16 or bf16), allocated through the host
    /// ops. Its ownership moves to the host.
    Dense {
        /// The scores.
        scores: Tensor,
    },
}
