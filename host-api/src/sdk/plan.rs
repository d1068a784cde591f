use crate::{
    sdk::{Host, OwnedTensor},
    Decision, Hessian, ParamInfo, PlanContextMut, PluginError, ScoreRequest, SelectScope,
    Selection, TensorId,
};

/// A strategy's view of the planning pass: safe methods over [`crate::PlanContext`].
pub struct Plan<'a> {
    ctx: PlanContextMut<'a>,
    params: Vec<ParamInfo>,
    host: Host,
}

impl<'a> Plan<'a> {
    /// Wraps the context the host passed to `select`.
    pub fn new(ctx: PlanContextMut<'a>) -> Plan<'a> {
        let params = ctx.params().into_vec();
        let host = Host::new(ctx.host());
        Plan { ctx, params, host }
    }

    /// The parameters of this pass, in order.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// Indices of all parameters, `0..n`.
    pub fn all(&self) -> Vec<u32> {
        (0..self.params.len() as u32).collect()
    }

    /// The host's tensor operations.
    pub fn host(&self) -> Host {
        self.host
    }

    /// The scorer's scores of one parameter, as a dense tensor the strategy owns.
    pub fn scores(
        &mut self,
        param: u32,
        request: ScoreRequest,
    ) -> Result<OwnedTensor, PluginError> {
        let t = self.ctx.scores(param, request).into_result()?;
        Ok(self.host.own(t))
    }

    /// Exact selection of the lowest-scoring weights; see [`crate::PlanContext::select_k_smallest`].
    pub fn select_k_smallest(
        &mut self,
        params: &[u32],
        ks: &[u64],
        scope: SelectScope,
    ) -> Result<Vec<Selection>, PluginError> {
        self.ctx
            .select_k_smallest(params.into(), ks.into(), scope)
            .into_result()
            .map(|v| v.into_vec())
    }

    /// Records the decision for one parameter.
    pub fn decide(&mut self, param: u32, decision: Decision) -> Result<(), PluginError> {
        self.ctx.decide(param, decision).into_result()
    }

    /// The weight of one parameter, borrowed until `select` returns (ABI 1.1).
    pub fn weight(&mut self, param: u32) -> Result<crate::Tensor, PluginError> {
        self.ctx.weight(param).into_result()
    }

    /// `XᵀX` of one parameter's calibration inputs, borrowed until `select` returns (ABI 1.1).
    pub fn hessian(&mut self, param: u32) -> Result<Hessian, PluginError> {
        self.ctx.hessian(param).into_result()
    }

    /// The count the pass's allocation prunes in `param`, if the pass has one (ABI 1.2).
    pub fn allocated(&self, param: u32) -> Option<u64> {
        self.ctx.allocated(param).into_option()
    }

    /// Exact selections at the allocation's counts (ABI 1.2); see
    /// [`crate::PlanContext::select_allocated`].
    pub fn select_allocated(
        &mut self,
        params: &[u32],
        scope: SelectScope,
    ) -> Result<Vec<Selection>, PluginError> {
        self.ctx
            .select_allocated(params.into(), scope)
            .into_result()
            .map(|v| v.into_vec())
    }

    /// The load on `param`'s layer: the calibration loss with the layer pruned alone at each
    /// measured sparsity (ABI 1.2).
    pub fn load(&mut self, param: u32) -> Result<Vec<crate::LoadPoint>, PluginError> {
        self.ctx.load(param).into_result().map(|v| v.into_vec())
    }

    /// Decides `param` with new values: `values` where `keep` is nonzero, 0 elsewhere (ABI 1.1).
    pub fn propose(
        &mut self,
        param: u32,
        values: &OwnedTensor,
        keep: &OwnedTensor,
    ) -> Result<(), PluginError> {
        let (v, k): (TensorId, TensorId) = (values.tensor().id, keep.tensor().id);
        self.ctx.propose(param, v, k).into_result()
    }
}
