use abi_stable::{
    sabi_trait,
    sabi_types::RMut,
    std_types::{ROption, RResult, RSlice, RVec},
    StableAbi,
};

use crate::{
    error::PluginError,
    ops::HostOps_Ref,
    score::{ParamInfo, ScoreRequest},
    tensor::{Tensor, TensorId},
};

/// An N:M pattern: keep `n` of every `m` consecutive weights along the input (last) dimension.
/// 2:4 keeps 2 of 4.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NmPattern {
    /// Weights kept per group.
    pub n: u32,
    /// Group size.
    pub m: u32,
}

/// What a pass is asked to reach.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// Fraction of weights to prune, in `[0, 1]`. Exactly `round(sparsity × n)` weights are
    /// pruned in each scope a strategy selects over (`f64::round`: halves away from zero).
    pub sparsity: f64,
    /// An N:M pattern when the user asked for one (`--pattern 2:4`).
    pub nm: ROption<NmPattern>,
}

/// Over what a [`PlanContext::select_k_smallest`] call counts.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SelectScope {
    /// One selection over all the given parameters together: `ks` holds one count.
    Global,
    /// One selection per parameter: `ks` holds one count per parameter.
    PerParam,
    /// One selection per output row of each parameter: `ks` holds, per parameter, the count
    /// to prune in each of its rows.
    PerRow,
}

/// The outcome of an exact selection, returned by [`PlanContext::select_k_smallest`].
///
/// Ties are broken deterministically: among weights whose scores equal the threshold, those
/// earlier in the order of the `params` argument are pruned first, and within a parameter
/// those with the lower flat (row-major) index. CPU and GPU give bit-identical masks.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct Selection {
    /// Pass this to [`Decision::Apply`].
    pub id: u32,
    /// Weights the selection prunes (exactly the requested count).
    pub pruned: u64,
    /// Weights it looked at.
    pub considered: u64,
    /// The score at the threshold (the largest pruned score); NaN for `PerRow`, which has one
    /// threshold per row.
    pub threshold: f64,
}

/// What the host does to one parameter at commit.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Leave it dense.
    Keep,
    /// Prune what a selection chose in this parameter. The selection must cover it.
    Apply {
        /// [`Selection::id`].
        selection: u32,
    },
    /// Keep the `n` highest-scoring weights of every `m` consecutive ones along the last
    /// dimension; among equal scores the lower index is pruned first.
    NM {
        /// The pattern.
        pattern: NmPattern,
    },
    /// An explicit mask of the weight's shape (u8 or bool, nonzero = keep). The host copies it
    /// during the call; the plugin keeps ownership of the tensor.
    Mask {
        /// The mask tensor.
        mask: TensorId,
    },
}

/// The host side of a planning pass, handed to [`crate::Strategy::select`]. Nothing in the
/// model changes while a strategy plans: decisions are recorded and applied after `select`
/// returns successfully, all at once.
#[sabi_trait]
pub trait PlanContext {
    /// The parameters of this pass, in order (`params()[i].index == i`).
    fn params(&self) -> RVec<ParamInfo>;

    /// The host operation table.
    fn host(&self) -> HostOps_Ref;

    /// Runs the pass's scorer on one parameter and returns its scores as a dense tensor of the
    /// requested granularity (f32 for fused magnitude scores). Ownership moves to the strategy:
    /// release it when done. Scores of a 7B model do not fit in memory at once: ask for them
    /// one parameter at a time, or let [`PlanContext::select_k_smallest`] stream them.
    fn scores(&mut self, param: u32, request: ScoreRequest) -> RResult<Tensor, PluginError>;

    /// Exact selection of the `k` lowest-scoring weights over `scope` (see [`SelectScope`] for
    /// what `ks` holds). The host streams scores through its selection kernels one parameter at
    /// a time, scoring a parameter more than once when that saves memory (scorers are
    /// deterministic). Fails with `NonFinite` naming the parameter if a weight or a score is
    /// NaN or infinite.
    fn select_k_smallest(
        &mut self,
        params: RSlice<'_, u32>,
        ks: RSlice<'_, u64>,
        scope: SelectScope,
    ) -> RResult<RVec<Selection>, PluginError>;

    /// Records what to do with one parameter. Every parameter needs exactly one decision.
    ///
    /// This is the last method of ABI 1.0; the methods below came in 1.1 and 1.2 (a host
    /// refuses a plugin built against a newer minor before any is called).
    #[sabi(last_prefix_field)]
    fn decide(&mut self, param: u32, decision: Decision) -> RResult<(), PluginError>;

    /// The weight of `param` itself, borrowed until `select` returns: read it, never write
    /// through it. ABI 1.1, capability `plan.reconstruct`.
    fn weight(&mut self, param: u32) -> RResult<Tensor, PluginError> {
        let _ = param;
        RResult::RErr(PluginError::unsupported("this host predates ABI 1.1"))
    }

    /// `XᵀX` of the calibration inputs of `param` (a Linear weight `[out, in]`), borrowed until
    /// `select` returns. `InvalidArgument` when the pass has none (a strategy that declares
    /// [`crate::InputSet::HESSIAN`] always gets them). ABI 1.1, capability `inputs.hessian`.
    fn hessian(&mut self, param: u32) -> RResult<Hessian, PluginError> {
        let _ = param;
        RResult::RErr(PluginError::unsupported("this host predates ABI 1.1"))
    }

    /// Decides `param` with new values: at commit its weight becomes `values` where `keep` is
    /// nonzero and 0 elsewhere (`values`: any float type, cast to the weight's; `keep`: u8 or
    /// bool; both of the weight's shape). The host copies both during the call; the plugin
    /// keeps ownership. Counts as the parameter's one decision. The commit is transactional as
    /// every commit is: a failure puts back every weight it wrote. ABI 1.1, capability
    /// `plan.reconstruct`.
    fn propose(
        &mut self,
        param: u32,
        values: TensorId,
        keep: TensorId,
    ) -> RResult<(), PluginError> {
        let _ = (param, values, keep);
        RResult::RErr(PluginError::unsupported("this host predates ABI 1.1"))
    }

    /// How many weights of `param` the pass's allocation prunes, when the pass has one
    /// (`None`: no allocator; use [`Target::sparsity`]). Allocations are exact: the counts of
    /// a pass's parameters sum to the model-wide `round(s · N)` the allocator was asked for.
    /// ABI 1.2, capability `select.allocated`.
    fn allocated(&self, param: u32) -> ROption<u64> {
        let _ = param;
        ROption::RNone
    }

    /// [`PlanContext::select_k_smallest`] at the allocation's counts: `Global`, their sum over
    /// `params`; `PerParam`, each parameter's own; `PerRow`, each parameter's count split over
    /// its rows (`count / rows` in every row, one more in the first `count % rows` rows), so the
    /// rows sum to the parameter's count. Without an allocation, the counts are
    /// `round(sparsity · n)` of each scope, as a strategy would compute them. ABI 1.2,
    /// capability `select.allocated`.
    fn select_allocated(
        &mut self,
        params: RSlice<'_, u32>,
        scope: SelectScope,
    ) -> RResult<RVec<Selection>, PluginError> {
        let _ = (params, scope);
        RResult::RErr(PluginError::unsupported("this host predates ABI 1.2"))
    }

    /// The load on `param`'s decoder layer: the mean next-token loss on calibration text with
    /// that layer alone pruned at each measured sparsity by the pass's scorer and strategy
    /// (the first point is the dense model, sparsity 0). Parameters of one layer share their
    /// points. `InvalidArgument` when the pass measured none (an allocator that declares
    /// [`crate::InputSet::LOAD`] always gets them). ABI 1.2, capability `inputs.load`.
    fn load(&mut self, param: u32) -> RResult<RVec<LoadPoint>, PluginError> {
        let _ = param;
        RResult::RErr(PluginError::unsupported("this host predates ABI 1.2"))
    }
}

/// One measurement of a layer's load, from [`PlanContext::load`] (ABI 1.2).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq)]
pub struct LoadPoint {
    /// The sparsity the layer alone was pruned at.
    pub sparsity: f64,
    /// The mean next-token loss (nats) on the calibration text then.
    pub loss: f64,
}

/// A parameter's Hessian statistics, from [`PlanContext::hessian`] (ABI 1.1).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct Hessian {
    /// `Σ x xᵀ` over the calibration tokens `x` entering the Linear: f32 `[in, in]`, on the
    /// weight's device. Borrowed: never write through it.
    pub matrix: Tensor,
    /// How many tokens were summed.
    pub tokens: u64,
    /// Equal for parameters that read the same input (q/k/v of a block, gate/up), so a plugin
    /// can factor the matrix once for them; unique within the pass otherwise.
    pub group: u64,
}

/// How a strategy receives the plan context: a borrowed trait object.
pub type PlanContextMut<'a> = PlanContext_TO<'a, RMut<'a, ()>>;
