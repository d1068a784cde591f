use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult, RVec},
};

use crate::{
    error::PluginError,
    plan::{PlanContextMut, Target},
    score::{ParamInfo, ScoreInputs, ScoreOut, ScoreRequest},
};

/// Turns one parameter into importance scores. Created by [`crate::PluginModule::create_scorer`]
/// from a configuration; the host drops it (running its destructor inside the plugin) when
/// done. Calls on one instance never overlap.
#[sabi_trait]
pub trait Scorer: Send {
    /// Scores one parameter. Must be deterministic for the same inputs and state: the host may
    /// call it more than once per pass (a global selection over dense scores scores twice
    /// instead of holding every score; fused magnitude scores are kept, so those scorers are
    /// called once). The inputs are borrowed for this call only.
    fn score(
        &mut self,
        param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> RResult<ScoreOut, PluginError>;

    /// Training-time hook, called after each backward pass with the fresh gradient; stateful
    /// scorers accumulate here (on the weight's device, through the host ops). The default does
    /// nothing.
    ///
    /// This is the last method of ABI 1.0; methods added in later minors go below it.
    #[sabi(last_prefix_field)]
    fn observe(&mut self, param: &ParamInfo, inputs: &ScoreInputs) -> RResult<(), PluginError> {
        let _ = (param, inputs);
        RResult::ROk(())
    }
}

/// Turns scores into decisions. Created by [`crate::PluginModule::create_strategy`].
#[sabi_trait]
pub trait Strategy: Send {
    /// Plans one pass: asks the context for scores or selections and records one
    /// [`crate::Decision`] per parameter. An error here leaves the model untouched.
    ///
    /// This is the last method of ABI 1.0; methods added in later minors go below it.
    #[sabi(last_prefix_field)]
    fn select(&mut self, plan: PlanContextMut<'_>, target: &Target) -> RResult<(), PluginError>;

    /// An allocator's answer (ABI 1.2; components that answer it require `plan.allocate`): the
    /// sparsity each parameter of the pass should have, one per parameter in order. The plan
    /// context lends scores, weights and Hessians as in [`Strategy::select`]; decisions are
    /// refused. The host turns the answer into exact integer counts: clamped to `[0, 1]`,
    /// shifted by one common amount so the counts sum to `round(target.sparsity · N)`, and
    /// rounded by largest remainder (ties: the earlier parameter).
    fn allocate(
        &mut self,
        plan: PlanContextMut<'_>,
        target: &Target,
    ) -> RResult<RVec<f64>, PluginError> {
        let _ = (plan, target);
        RResult::RErr(PluginError::unsupported(
            "this component is not an allocator",
        ))
    }
}

/// An owned scorer trait object.
pub type ScorerBox = Scorer_TO<'static, RBox<()>>;
/// An owned strategy trait object.
pub type StrategyBox = Strategy_TO<'static, RBox<()>>;
