//! The strategy-facing side of planning, the same for every tensor library.
//!
//! A strategy plugin plans a pass through the ABI's [`PlanContext`]: it asks for scores, for
//! exact selections (global, per parameter, per row) and records one decision per parameter.
//! [`PlanDriver`] is that context. It checks every request (indices, counts, which selection
//! covers which parameter, N:M patterns against shapes), keeps the selections and decisions,
//! and keeps the first error so the pass reports the host's own account (which names the
//! parameter and stage) rather than the plugin's echo of it. The tensor work itself (scoring,
//! selecting on the device, building what the commit applies) is the adapter's: it implements
//! [`PlanBackend`].

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{ROption, RResult, RSlice, RVec},
};
use birdbone_host_api::{
    Decision, Hessian, HostOps_Ref, LoadPoint, NmPattern, ParamInfo, PlanContext, PlanContext_TO,
    PluginError, ScoreRequest, SelectScope, Selection, StrategyBox, Target, Tensor, TensorId,
};
use birdbone_select::{key_value, GlobalSelection, ParamQuota};

use crate::{bail, error::Error, registry::Component};

/// What a decision prunes in one parameter, as the driver hands it to the backend.
pub enum Rule<R> {
    /// Below the threshold key, plus the first `take` ties (a global or per-parameter selection).
    Threshold(ParamQuota),
    /// One threshold per row: the backend's per-row selection.
    PerRow(R),
    /// Keep `n` of every `m`.
    NM {
        /// Kept of every group.
        n: u32,
        /// The group size.
        m: u32,
    },
}

/// The tensor work of planning, which an adapter provides over its tensor library. Parameters
/// are named by their index in the pass. Nothing here may change the model.
pub trait PlanBackend {
    /// The adapter's error; host errors convert into it.
    type Error: From<Error> + std::fmt::Display;
    /// A per-row selection of one parameter, as the backend keeps it for the commit.
    type RowSel;
    /// One parameter's planned work, as the backend's commit applies it.
    type Planned;

    /// Runs one callback a plugin made: the adapter's error and panic handling, turning its
    /// error into the plugin's.
    fn guard<T>(f: impl FnOnce() -> Result<T, Self::Error>) -> RResult<T, PluginError>;
    /// A copy of an error for the pass's account.
    fn copy_error(e: &Self::Error) -> Self::Error;
    /// The host-operation table lent to the strategy.
    fn host_ops(&self) -> HostOps_Ref;
    /// Whether growth plates protect rows of parameter `p` this pass.
    fn has_protected_rows(&self, p: u32) -> bool;
    /// The scores of `p` as a tensor handed to (and owned by) the plugin.
    fn plugin_scores(&mut self, p: u32, request: ScoreRequest) -> Result<Tensor, Self::Error>;
    /// The `k` lowest-scoring weights over `params` together.
    fn select_global(&mut self, params: &[u32], k: u64) -> Result<GlobalSelection, Self::Error>;
    /// The `ks[i]` lowest-scoring weights of each `params[i]` on its own.
    fn select_each(
        &mut self,
        params: &[u32],
        ks: &[u64],
    ) -> Result<Vec<GlobalSelection>, Self::Error>;
    /// The `ks[i]` lowest-scoring weights of every row of each (2-D) `params[i]`, one more
    /// in its first `extras[i]` rows.
    fn select_rows(
        &mut self,
        params: &[u32],
        ks: &[u64],
        extras: &[u64],
    ) -> Result<Vec<Self::RowSel>, Self::Error>;
    /// Another handle to the same per-row selection.
    fn share_rows(rows: &Self::RowSel) -> Self::RowSel;
    /// Plans `rule` for `p`; `pruned` is what the rule prunes when it is applied as selected.
    fn plan_rule(
        &mut self,
        p: u32,
        rule: Rule<Self::RowSel>,
        pruned: u64,
        what: String,
    ) -> Result<Self::Planned, Self::Error>;
    /// Plans an explicit keep mask (a plugin's tensor, nonzero = kept) for `p`.
    fn plan_mask(&mut self, p: u32, mask: TensorId) -> Result<Self::Planned, Self::Error>;
    /// Plans leaving `p` as it is.
    fn plan_keep(&mut self, p: u32) -> Self::Planned;
    /// The weight of `p`, lent to the strategy until planning ends (ABI 1.1).
    fn lend_weight(&mut self, p: u32) -> Result<Tensor, Self::Error>;
    /// The Hessian statistics of `p`, lent until planning ends (ABI 1.1).
    fn lend_hessian(&mut self, p: u32) -> Result<Hessian, Self::Error>;
    /// The load measured on `p`'s layer (ABI 1.2); none by default.
    fn load(&mut self, p: u32) -> Result<Vec<LoadPoint>, Self::Error> {
        let _ = p;
        Err(Error::Invalid(
            "this pass measured no load (the allocator must declare InputSet::LOAD)".into(),
        )
        .into())
    }
    /// Plans new values for `p`: `values` where `keep` (the plugin's tensors) is nonzero, else
    /// 0 (ABI 1.1).
    fn plan_values(
        &mut self,
        p: u32,
        values: TensorId,
        keep: TensorId,
    ) -> Result<Self::Planned, Self::Error>;
}

enum SelRecord<R> {
    Threshold {
        params: Vec<u32>,
        quotas: Vec<ParamQuota>,
    },
    PerRow {
        param: u32,
        rows: R,
        k: u64,
        extra: u64,
    },
}

/// The [`PlanContext`] a strategy plans through, over an adapter's [`PlanBackend`].
pub struct PlanDriver<B: PlanBackend> {
    backend: B,
    infos: RVec<ParamInfo>,
    selections: Vec<SelRecord<B::RowSel>>,
    decisions: Vec<Option<B::Planned>>,
    error: Option<B::Error>,
    /// The allocation's count of each parameter (ABI 1.2), when the pass has one.
    allocated: Vec<Option<u64>>,
    target: Option<Target>,
    /// Running an allocator: decisions are refused.
    allocating: bool,
}

/// What planning left once the strategy returned.
pub struct PlanOutcome<B: PlanBackend> {
    /// The backend, with whatever it still has to check before anything is written.
    pub backend: B,
    /// Each parameter's decision, `None` where the strategy made none.
    pub decisions: Vec<Option<B::Planned>>,
}

impl<B: PlanBackend> PlanDriver<B> {
    /// A driver for the parameters described by `infos` (index `i` is parameter `i`).
    pub fn new(backend: B, infos: RVec<ParamInfo>) -> PlanDriver<B> {
        PlanDriver {
            backend,
            decisions: (0..infos.len()).map(|_| None).collect(),
            infos,
            selections: Vec::new(),
            error: None,
            allocated: Vec::new(),
            target: None,
            allocating: false,
        }
    }

    /// The allocation's count for each parameter (index `i` is parameter `i`), which
    /// strategies read through [`PlanContext::allocated`] and `select_allocated`.
    pub fn with_allocation(mut self, counts: Vec<Option<u64>>) -> PlanDriver<B> {
        self.allocated = counts;
        self
    }

    /// Runs `allocator`'s [`birdbone_host_api::Strategy::allocate`] on `target`: its sparsity
    /// for each parameter, and the backend back.
    pub fn run_allocate(
        mut self,
        allocator: &mut Component<StrategyBox>,
        target: &Target,
    ) -> Result<(Vec<f64>, B), B::Error> {
        self.allocating = true;
        self.target = Some(*target);
        let result = {
            let ctx = PlanContext_TO::from_ptr(&mut self, TD_Opaque);
            allocator.object.allocate(ctx, target).into_result()
        };
        match result {
            Ok(v) => Ok((v.into_vec(), self.backend)),
            Err(error) => Err(self.error.take().unwrap_or_else(|| {
                Error::Plugin {
                    component: allocator.name.clone(),
                    param: "the allocation".into(),
                    error,
                }
                .into()
            })),
        }
    }

    /// Runs `strategy` on `target`. On failure, the host's account of the first error if it
    /// kept one, else the strategy's own.
    pub fn run(
        mut self,
        strategy: &mut Component<StrategyBox>,
        target: &Target,
    ) -> Result<PlanOutcome<B>, B::Error> {
        self.target = Some(*target);
        let result = {
            let ctx = PlanContext_TO::from_ptr(&mut self, TD_Opaque);
            strategy.object.select(ctx, target).into_result()
        };
        if let Err(error) = result {
            return Err(self.error.take().unwrap_or_else(|| {
                Error::Plugin {
                    component: strategy.name.clone(),
                    param: "the pass".into(),
                    error,
                }
                .into()
            }));
        }
        Ok(self.into_outcome())
    }

    /// The backend and the decisions made so far (for an adapter that calls the strategy
    /// itself; [`PlanDriver::run`] does both).
    pub fn into_outcome(self) -> PlanOutcome<B> {
        PlanOutcome {
            backend: self.backend,
            decisions: self.decisions,
        }
    }

    fn info(&self, p: u32) -> Result<&ParamInfo, Error> {
        self.infos.get(p as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "parameter index {p} is out of range (the pass has {})",
                self.infos.len()
            ))
        })
    }

    fn select(
        &mut self,
        params: &[u32],
        ks: &[u64],
        scope: SelectScope,
    ) -> Result<Vec<Selection>, B::Error> {
        self.select_split(params, ks, &vec![0; ks.len()], scope)
    }

    /// [`PlanDriver::select`] where, per row, the first `extras[i]` rows of `params[i]` take
    /// one more.
    fn select_split(
        &mut self,
        params: &[u32],
        ks: &[u64],
        extras: &[u64],
        scope: SelectScope,
    ) -> Result<Vec<Selection>, B::Error> {
        for &p in params {
            self.info(p)?;
        }
        let count_per_param = |what: &str| -> Result<(), Error> {
            if ks.len() != params.len() {
                bail!(
                    "a {what} selection takes one count per parameter ({} for {})",
                    ks.len(),
                    params.len()
                );
            }
            Ok(())
        };
        match scope {
            SelectScope::Global => {
                if ks.len() != 1 {
                    bail!("a global selection takes one count, got {}", ks.len());
                }
                if params.is_empty() {
                    bail!("a selection over no parameters");
                }
                let g = self.backend.select_global(params, ks[0])?;
                Ok(vec![self.record_threshold(params.to_vec(), g, ks[0])])
            }
            SelectScope::PerParam => {
                count_per_param("per-parameter")?;
                let each = self.backend.select_each(params, ks)?;
                Ok(params
                    .iter()
                    .zip(ks)
                    .zip(each)
                    .map(|((&p, &k), g)| self.record_threshold(vec![p], g, k))
                    .collect())
            }
            SelectScope::PerRow => {
                count_per_param("per-row")?;
                for &p in params {
                    let info = &self.infos[p as usize];
                    if self.backend.has_protected_rows(p) {
                        bail!(
                            "'{}' has protected rows, but a per-row selection prunes the same count in every row: use a per-parameter or global strategy with growth plates",
                            info.name
                        );
                    }
                    if info.shape.len() != 2 {
                        bail!(
                            "per-row selection needs a 2-D parameter; '{}' is {:?}",
                            info.name,
                            info.shape.as_slice()
                        );
                    }
                }
                for (&p, &extra) in params.iter().zip(extras) {
                    let info = &self.infos[p as usize];
                    if extra > info.shape[0] as u64 {
                        bail!(
                            "'{}' has {} rows, not {extra} to take one more",
                            info.name,
                            info.shape[0]
                        );
                    }
                }
                let rows = self.backend.select_rows(params, ks, extras)?;
                let mut out = Vec::with_capacity(params.len());
                for (((&p, &k), &extra), rows) in params.iter().zip(ks).zip(extras).zip(rows) {
                    let info = &self.infos[p as usize];
                    out.push(Selection {
                        id: self.selections.len() as u32,
                        pruned: k * info.shape[0] as u64 + extra,
                        considered: info.numel,
                        threshold: f64::NAN,
                    });
                    self.selections.push(SelRecord::PerRow {
                        param: p,
                        rows,
                        k,
                        extra,
                    });
                }
                Ok(out)
            }
        }
    }

    fn record_threshold(&mut self, params: Vec<u32>, g: GlobalSelection, k: u64) -> Selection {
        let id = self.selections.len() as u32;
        let threshold = if k == 0 {
            f64::NEG_INFINITY
        } else {
            key_value(g.threshold) as f64
        };
        self.selections.push(SelRecord::Threshold {
            params,
            quotas: g.params,
        });
        Selection {
            id,
            pruned: g.pruned,
            considered: g.considered,
            threshold,
        }
    }

    fn decide(&mut self, p: u32, decision: Decision) -> Result<(), B::Error> {
        self.refuse_while_allocating()?;
        let info = self.info(p)?;
        let (name, numel) = (info.name.to_string(), info.numel);
        let cols = info.shape.last().copied().unwrap_or(0);
        if self.decisions[p as usize].is_some() {
            bail!("parameter '{name}' was already decided");
        }
        let planned = match decision {
            Decision::Keep => self.backend.plan_keep(p),
            Decision::Apply { selection } => {
                let (rule, pruned, what) = match self.selections.get(selection as usize) {
                    // Strategies mostly select parameters in order: try p's own place first.
                    Some(SelRecord::Threshold { params, quotas }) => match params
                        .get(p as usize)
                        .filter(|&&q| q == p)
                        .map(|_| p as usize)
                        .or_else(|| params.iter().position(|&q| q == p))
                    {
                        Some(i) => (
                            Rule::Threshold(quotas[i]),
                            quotas[i].pruned(),
                            format!("selection {selection}"),
                        ),
                        None => bail!("selection {selection} does not cover '{name}'"),
                    },
                    Some(SelRecord::PerRow {
                        param,
                        rows,
                        k,
                        extra,
                    }) if *param == p => (
                        Rule::PerRow(B::share_rows(rows)),
                        k * (numel / cols.max(1) as u64) + extra,
                        if *extra > 0 {
                            format!("{k} per row, {} in the first {extra}", k + 1)
                        } else {
                            format!("{k} per row")
                        },
                    ),
                    Some(SelRecord::PerRow { .. }) => {
                        bail!("selection {selection} does not cover '{name}'")
                    }
                    None => bail!("there is no selection {selection}"),
                };
                self.backend.plan_rule(p, rule, pruned, what)?
            }
            Decision::NM {
                pattern: NmPattern { n, m },
            } => {
                if m == 0 || n > m || m > 32 || cols % m as i64 != 0 {
                    bail!("{n}:{m} does not fit '{name}' (rows of {cols}; need N <= M <= 32 and M dividing the row)");
                }
                let pruned = numel / m as u64 * (m - n) as u64;
                self.backend
                    .plan_rule(p, Rule::NM { n, m }, pruned, format!("{n}:{m}"))?
            }
            Decision::Mask { mask } => self.backend.plan_mask(p, mask)?,
        };
        self.decisions[p as usize] = Some(planned);
        Ok(())
    }

    /// Records `planned` as the decision of `p`, refusing a second decision.
    fn settle(
        &mut self,
        p: u32,
        plan: impl FnOnce(&mut B) -> Result<B::Planned, B::Error>,
    ) -> Result<(), B::Error> {
        self.refuse_while_allocating()?;
        let name = self.info(p)?.name.to_string();
        if self.decisions[p as usize].is_some() {
            bail!("parameter '{name}' was already decided");
        }
        let planned = plan(&mut self.backend)?;
        self.decisions[p as usize] = Some(planned);
        Ok(())
    }

    fn refuse_while_allocating(&self) -> Result<(), Error> {
        if self.allocating {
            bail!("an allocator answers with sparsities; it decides no parameter");
        }
        Ok(())
    }

    /// The count of `p` the pass's allocation gives, if any.
    fn allocated_count(&self, p: u32) -> Option<u64> {
        self.allocated.get(p as usize).copied().flatten()
    }

    /// Selections at the allocation's counts (or `round(s · n)` per scope without one).
    fn select_allocated(
        &mut self,
        params: &[u32],
        scope: SelectScope,
    ) -> Result<Vec<Selection>, B::Error> {
        let Some(target) = self.target else {
            bail!("select_allocated outside a pass");
        };
        let round = |n: u64| ((target.sparsity * n as f64).round() as u64).min(n);
        let mut counts = Vec::with_capacity(params.len());
        for &p in params {
            let info = self.info(p)?;
            counts.push(match self.allocated_count(p) {
                Some(c) => Some(c),
                None => (scope != SelectScope::PerRow).then(|| round(info.numel)),
            });
        }
        match scope {
            SelectScope::Global => {
                let k = counts.iter().map(|c| c.unwrap_or(0)).sum();
                self.select(params, &[k], scope)
            }
            SelectScope::PerParam => {
                let ks: Vec<u64> = counts.iter().map(|c| c.unwrap_or(0)).collect();
                self.select(params, &ks, scope)
            }
            SelectScope::PerRow => {
                let (mut ks, mut extras) = (Vec::new(), Vec::new());
                for (&p, c) in params.iter().zip(&counts) {
                    let info = self.info(p)?;
                    if info.shape.len() != 2 {
                        bail!(
                            "per-row selection needs a 2-D parameter; '{}' is {:?}",
                            info.name,
                            info.shape.as_slice()
                        );
                    }
                    let (rows, cols) = (info.shape[0] as u64, info.shape[1] as u64);
                    match c {
                        Some(c) => {
                            ks.push(c / rows.max(1));
                            extras.push(c % rows.max(1));
                        }
                        None => {
                            ks.push(round(cols));
                            extras.push(0);
                        }
                    }
                }
                self.select_split(params, &ks, &extras, scope)
            }
        }
    }

    fn record<T>(&mut self, r: Result<T, B::Error>) -> Result<T, B::Error> {
        if let Err(e) = &r {
            if self.error.is_none() {
                self.error = Some(B::copy_error(e));
            }
        }
        r
    }
}

/// Every parameter's decision, or an error naming the first one `strategy` left undecided.
pub fn all_decided<P>(
    decisions: Vec<Option<P>>,
    infos: &[ParamInfo],
    strategy: &str,
) -> Result<Vec<P>, Error> {
    decisions
        .into_iter()
        .zip(infos)
        .map(|(d, info)| {
            d.ok_or_else(|| Error::Plugin {
                component: strategy.to_string(),
                param: info.name.to_string(),
                error: PluginError::invalid(
                    "the strategy returned without deciding this parameter",
                ),
            })
        })
        .collect()
}

impl<B: PlanBackend> PlanContext for PlanDriver<B> {
    fn params(&self) -> RVec<ParamInfo> {
        self.infos.clone()
    }

    fn host(&self) -> HostOps_Ref {
        self.backend.host_ops()
    }

    fn scores(&mut self, param: u32, request: ScoreRequest) -> RResult<Tensor, PluginError> {
        B::guard(|| {
            let r = match self.info(param) {
                Ok(_) => self.backend.plugin_scores(param, request),
                Err(e) => Err(e.into()),
            };
            self.record(r)
        })
    }

    fn select_k_smallest(
        &mut self,
        params: RSlice<'_, u32>,
        ks: RSlice<'_, u64>,
        scope: SelectScope,
    ) -> RResult<RVec<Selection>, PluginError> {
        B::guard(|| {
            let r = self.select(params.as_slice(), ks.as_slice(), scope);
            self.record(r).map(RVec::from)
        })
    }

    fn decide(&mut self, param: u32, decision: Decision) -> RResult<(), PluginError> {
        B::guard(|| {
            let r = PlanDriver::decide(self, param, decision);
            self.record(r)
        })
    }

    fn weight(&mut self, param: u32) -> RResult<Tensor, PluginError> {
        B::guard(|| {
            let r = match self.info(param) {
                Ok(_) => self.backend.lend_weight(param),
                Err(e) => Err(e.into()),
            };
            self.record(r)
        })
    }

    fn hessian(&mut self, param: u32) -> RResult<Hessian, PluginError> {
        B::guard(|| {
            let r = match self.info(param) {
                Ok(_) => self.backend.lend_hessian(param),
                Err(e) => Err(e.into()),
            };
            self.record(r)
        })
    }

    fn propose(
        &mut self,
        param: u32,
        values: TensorId,
        keep: TensorId,
    ) -> RResult<(), PluginError> {
        B::guard(|| {
            let r = self.settle(param, |b| b.plan_values(param, values, keep));
            self.record(r)
        })
    }

    fn load(&mut self, param: u32) -> RResult<RVec<LoadPoint>, PluginError> {
        B::guard(|| {
            let r = match self.info(param) {
                Ok(_) => self.backend.load(param).map(RVec::from),
                Err(e) => Err(e.into()),
            };
            self.record(r)
        })
    }

    fn allocated(&self, param: u32) -> ROption<u64> {
        self.allocated_count(param).into()
    }

    fn select_allocated(
        &mut self,
        params: RSlice<'_, u32>,
        scope: SelectScope,
    ) -> RResult<RVec<Selection>, PluginError> {
        B::guard(|| {
            let r = PlanDriver::select_allocated(self, params.as_slice(), scope);
            self.record(r).map(RVec::from)
        })
    }
}
