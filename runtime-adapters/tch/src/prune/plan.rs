//! Planning a pass over tch tensors: gather the parameters and their inputs, run the strategy
//! through the host's plan driver, then read every finiteness check before anything is
//! written.

use std::{collections::BTreeMap, time::Instant};

use abi_stable::std_types::{RNone, ROption, RVec};
use birdbone_host::{
    plan::{all_decided, PlanDriver},
    role_of, Allocation, Component, ParamFilter, PassConfig, PassReport, PluginRegistry,
};
use birdbone_host_api::{DeviceSet, InputSet, ParamInfo, ScoreInputs, ScorerBox, StrategyBox};
use tch::{Device, Kind, Tensor};

use super::{
    backend::TchPlan,
    commit::{PlannedParam, PrunePlan},
    PassInputs,
};
use crate::{
    engine::{self, Count, Rule, Scores},
    error::{HostError, Result},
    mask::MaskSet,
    ops::host_ops,
    params::{selected, ParamSource},
    stats::ActivationStats,
    tensors::{device_of, dtype_of, Lent},
    undo::{Journal, UndoHistory, UndoPolicy},
};

/// The pass over one block's weights: those of `names` that `config.filter` selects (`None`
/// when it selects none of them).
pub(super) fn block_config(names: &[String], config: &PassConfig) -> Option<PassConfig> {
    // The block's weights are Linear weights (2-D): the filter decides on names.
    let chosen: Vec<String> = names
        .iter()
        .filter(|n| config.filter.selects(n, &[1, 1]))
        .cloned()
        .collect();
    (!chosen.is_empty()).then(|| PassConfig {
        filter: ParamFilter {
            include: chosen,
            exclude: config.filter.exclude.clone(),
        },
        ..config.clone()
    })
}

/// A scorer and a strategy, ready to run passes.
pub struct Pruner {
    scorer: Component<ScorerBox>,
    strategy: Component<StrategyBox>,
    allocator: Option<Component<StrategyBox>>,
    undo: UndoPolicy,
    history: UndoHistory,
}

/// One parameter of a pass and what its scorer may be lent.
pub(super) struct PlanParam {
    pub name: String,
    pub info: ParamInfo,
    pub weight: Tensor,
    pub grad: Option<Tensor>,
    pub act: Option<(Tensor, u64)>,
    /// `XᵀX` of its calibration inputs, its tokens and its input group.
    pub hessian: Option<(Tensor, u64, u64)>,
    /// The load measured on its layer: `(sparsity, loss)`.
    pub load: Option<Vec<(f64, f64)>>,
    /// Rows no selection may prune (bool `[rows]`, on the weight's device).
    pub protected: Option<Tensor>,
}

/// One parameter's planned work.
pub(crate) enum Planned {
    Keep,
    /// Evaluated at commit, in the same kernel that writes the weight.
    Lazy {
        scores: Scores,
        rule: Rule,
        pruned: u64,
        what: String,
    },
    /// A mask built during planning.
    Mask {
        bits: Tensor,
        pruned: Count,
        what: String,
    },
    /// New values proposed by a strategy (zero where pruned), in the weight's element type,
    /// and the packed keep bits.
    Values {
        values: Tensor,
        bits: Tensor,
        pruned: Count,
        what: String,
    },
}

/// Column scales multiply magnitudes, so they must be finite and non-negative. One batched check
/// per device for the whole pass (a device round trip per parameter cost more than the
/// selection itself on a 7B model); the offending parameter is looked up only on failure.
fn check_scales(params: &[PlanParam], scales: &[(u32, Tensor)]) -> Result<()> {
    let bad_at = |s: &Tensor| -> Result<Option<u64>> {
        let bad = s
            .f_isfinite()?
            .f_logical_and(&s.f_ge(0.0)?)?
            .f_logical_not()?;
        let at = bad.f_nonzero()?;
        Ok((at.size()[0] > 0).then(|| at.int64_value(&[0, 0]) as u64))
    };
    let mut devices: Vec<Device> = Vec::new();
    for (_, s) in scales {
        if !devices.contains(&s.device()) {
            devices.push(s.device());
        }
    }
    for device in devices {
        let group: Vec<&(u32, Tensor)> = scales
            .iter()
            .filter(|(_, s)| s.device() == device)
            .collect();
        let all = Tensor::f_cat(&group.iter().map(|(_, s)| s).collect::<Vec<_>>(), 0)?;
        let all_ok = all
            .f_isfinite()?
            .f_logical_and(&all.f_ge(0.0)?)?
            .f_all()?
            .int64_value(&[])
            == 1;
        if all_ok {
            continue;
        }
        for (p, s) in group {
            if let Some(index) = bad_at(s)? {
                return Err(HostError::NonFinite {
                    what: "column scale (activation norms, which must be finite and non-negative)",
                    param: params[*p as usize].name.clone(),
                    index,
                }
                .into());
            }
        }
    }
    Ok(())
}

pub(super) fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn param_info(index: usize, name: &str, w: &Tensor, device: Device) -> Result<ParamInfo> {
    let dtype = dtype_of(w.kind()).ok_or_else(|| HostError::Shape {
        op: "plan",
        message: format!("'{name}' has element type {:?}", w.kind()),
    })?;
    let shape = w.size();
    Ok(ParamInfo {
        index: index as u32,
        name: name.into(),
        role: role_of(name),
        numel: shape.iter().product::<i64>() as u64,
        shape: shape.into(),
        dtype,
        device: device_of(device),
    })
}

impl Pruner {
    /// Creates the scorer and strategy from the registry's plugins.
    pub fn new(
        registry: &PluginRegistry,
        scorer: &str,
        scorer_settings: &BTreeMap<String, String>,
        strategy: &str,
        strategy_settings: &BTreeMap<String, String>,
    ) -> Result<Pruner> {
        Ok(Pruner {
            scorer: registry.create_scorer(scorer, scorer_settings, host_ops())?,
            strategy: registry.create_strategy(strategy, strategy_settings, host_ops())?,
            allocator: None,
            undo: UndoPolicy::default(),
            history: UndoHistory::default(),
        })
    }

    /// The recipe's scorer and strategy with their settings, and its allocator when it names
    /// one.
    pub fn from_recipe(
        registry: &PluginRegistry,
        recipe: &birdbone_host::Recipe,
    ) -> Result<Pruner> {
        let mut p = Pruner::new(
            registry,
            &recipe.scorer.name,
            &recipe.scorer.settings(),
            &recipe.strategy.name,
            &recipe.strategy.settings(),
        )?;
        if let Some(a) = &recipe.allocator {
            p.set_allocator(registry, &a.name, &a.settings())?;
        }
        Ok(p)
    }

    /// Sets the allocator [`Pruner::allocate`] runs (ABI 1.2): a component of the registry
    /// that requires `plan.allocate` (`uniform`, `owl`, `birdbone`).
    pub fn set_allocator(
        &mut self,
        registry: &PluginRegistry,
        name: &str,
        settings: &BTreeMap<String, String>,
    ) -> Result<()> {
        self.allocator = Some(registry.create_allocator(name, settings, host_ops())?);
        Ok(())
    }

    /// The allocator's inputs (what its plugin declared), when one is set.
    pub fn allocator_inputs(&self) -> Option<InputSet> {
        self.allocator.as_ref().map(|a| a.info.capabilities.inputs)
    }

    /// Whether the allocator set reads the load on each layer (`InputSet::LOAD`), which the
    /// caller measures first (`birdbone_llama::layer_load` with [`Pruner::trial`]).
    pub fn allocator_needs_load(&self) -> bool {
        self.allocator_inputs()
            .is_some_and(|i| i.contains(InputSet::LOAD))
    }

    /// Runs the allocator over the parameters of `model` that `config.filter` selects, with
    /// the pass's scorer (OWL reads Wanda's scores through it): exact counts that sum to
    /// `round(config.sparsity · N)`. Nothing in the model changes. Put the result in
    /// [`PassConfig::allocation`] for the passes that prune.
    pub fn allocate(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        config: &PassConfig,
        inputs: PassInputs<'_>,
    ) -> Result<Allocation> {
        if self.allocator.is_none() {
            birdbone_host::bail!("no allocator is set (Pruner::set_allocator)");
        }
        if config.nm.is_some() {
            birdbone_host::bail!(
                "an N:M pattern prunes the same share of every group, so it cannot be allocated"
            );
        }
        let target = config.target()?;
        let params = selected(model, &config.filter)?;
        if params.is_empty() {
            birdbone_host::bail!("no parameters to allocate: the filter selected none");
        }
        let started = Instant::now();
        let _g = tch::no_grad_guard();
        // The strategy's own inputs (SparseGPT's Hessians) are for the passes that prune.
        let plan_params = self.gather(params, inputs, false)?;
        let allocator = self.allocator.as_mut().expect("checked above");
        if allocator.info.capabilities.inputs.contains(InputSet::LOAD) {
            if let Some(p) = plan_params.iter().find(|p| p.load.is_none()) {
                return Err(HostError::Config {
                    component: allocator.name.clone(),
                    message: format!("it needs the load on each layer and none was measured for '{}': measure it first (birdbone_llama::layer_load)", p.name),
                }
                .into());
            }
        }
        let infos: RVec<ParamInfo> = plan_params.iter().map(|p| p.info.clone()).collect();
        let backend = TchPlan::new(&plan_params, &mut self.scorer.object, &self.scorer.name);
        let (asked, _) = PlanDriver::new(backend, infos).run_allocate(allocator, &target)?;
        let sizes: Vec<(String, u64)> = plan_params
            .iter()
            .map(|p| (p.name.clone(), p.info.numel))
            .collect();
        let settings: BTreeMap<String, String> = allocator
            .config
            .iter()
            .map(|e| (e.name.to_string(), e.value.to_string()))
            .collect();
        let a = Allocation::exact(&allocator.name, &settings, config.sparsity, &sizes, &asked)?;
        tracing::debug!(
            "allocation by '{}' in {:.3} s",
            allocator.name,
            started.elapsed().as_secs_f64()
        );
        Ok(a)
    }

    /// Prunes only the parameters named in `names` (of those `config.filter` selects) to
    /// `config.sparsity` and returns the journal that takes the trial back
    /// ([`Journal::restore`]): how the layer load of the `birdbone` allocator is measured, one
    /// layer at a time with the pass's own scorer and strategy. Masks are not kept.
    pub fn trial(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        names: Vec<String>,
        config: &PassConfig,
        inputs: PassInputs<'_>,
    ) -> Result<Journal> {
        let only = PassConfig {
            sparsity: config.sparsity,
            nm: config.nm,
            keep_masks: false,
            filter: birdbone_host::ParamFilter {
                include: names,
                exclude: config.filter.exclude.clone(),
            },
            allocation: None,
        };
        let (_, _, journal) = self.plan(model, &only, inputs)?.commit_undoable()?;
        Ok(journal)
    }

    /// Whether [`Pruner::run`] keeps a journal to roll a failed commit back (default: yes),
    /// and how many completed passes [`Pruner::undo`] can take back within how much host
    /// memory (default: none). Shrinking the policy drops the oldest kept passes.
    pub fn set_undo(&mut self, policy: UndoPolicy) -> Result<()> {
        if policy.passes > 0 && !policy.rollback {
            birdbone_host::bail!(
                "undo keeps the rollback journal of each pass: it needs rollback on"
            );
        }
        self.undo = policy;
        let kept = std::mem::take(&mut self.history);
        self.history = kept.trimmed(&policy);
        Ok(())
    }

    /// The undo policy.
    pub fn undo_policy(&self) -> UndoPolicy {
        self.undo
    }

    /// Takes the newest kept pass back: every weight it wrote is restored bit for bit (into the
    /// same tensors). `Ok(false)` when no pass is kept. Masks a caller holds are its own to
    /// restore (the training callback does).
    pub fn undo(&mut self) -> Result<bool> {
        self.history.undo()
    }

    /// The passes that can be taken back.
    pub fn history(&self) -> &UndoHistory {
        &self.history
    }

    /// Takes the kept passes away (to a caller that keeps one history over several pruners).
    pub fn take_history(&mut self) -> UndoHistory {
        std::mem::take(&mut self.history)
    }

    /// Whether the strategy needs Hessian statistics (`XᵀX` of each Linear's calibration
    /// inputs, [`InputSet::HESSIAN`]): the calibration must collect them.
    pub fn needs_hessians(&self) -> bool {
        self.strategy
            .info
            .capabilities
            .inputs
            .contains(InputSet::HESSIAN)
    }

    /// Whether the scorer reads activation statistics ([`InputSet::ACTIVATION_STATS`]: Wanda,
    /// RIA): a pass needs them from calibration or, in training, from the forwards.
    pub fn needs_activations(&self) -> bool {
        self.scorer
            .info
            .capabilities
            .inputs
            .contains(InputSet::ACTIVATION_STATS)
    }

    /// The scorer (a training loop feeds it through [`Pruner::observe`]).
    pub fn scorer_name(&self) -> &str {
        &self.scorer.name
    }

    /// Feeds the scorer one training step's gradients (for scorers that accumulate them).
    pub fn observe(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (i, (name, w)) in params.iter().enumerate() {
            let info = param_info(i, name, w, w.device())?;
            let mut lent = Lent::default();
            let g = w.grad();
            let inputs = ScoreInputs {
                weight: lent.lend(w)?,
                grad: if g.defined() {
                    ROption::RSome(lent.lend(&g)?)
                } else {
                    RNone
                },
                act_sq_sums: RNone,
                act_tokens: 0,
            };
            self.scorer
                .object
                .observe(&info, &inputs)
                .into_result()
                .map_err(|error| HostError::Plugin {
                    component: self.scorer.name.clone(),
                    param: name.clone(),
                    error,
                })?;
        }
        Ok(())
    }

    /// Plans a pass over the parameters of `model` that `config.filter` selects.
    pub fn plan(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        config: &PassConfig,
        inputs: PassInputs<'_>,
    ) -> Result<PrunePlan> {
        let params = selected(model, &config.filter)?;
        self.plan_params(params, config, inputs)
    }

    /// Plans a pass over exactly these parameters.
    pub fn plan_params(
        &mut self,
        params: Vec<(String, Tensor)>,
        config: &PassConfig,
        inputs: PassInputs<'_>,
    ) -> Result<PrunePlan> {
        let started = Instant::now();
        let target = config.target()?;
        if params.is_empty() {
            birdbone_host::bail!("no parameters to prune: the filter selected none");
        }
        let _g = tch::no_grad_guard();
        let device = params[0].1.device();
        let _span = tracing::debug_span!("plan", params = params.len(), ?device).entered();
        engine::mark(device, "(before the plan)");
        let plan_params = self.gather(params, inputs, true)?;
        engine::mark(device, "plan: parameters checked");
        let infos: RVec<ParamInfo> = plan_params.iter().map(|p| p.info.clone()).collect();
        let counts = match &config.allocation {
            None => Vec::new(),
            Some(a) => {
                let sizes: Vec<(String, u64)> = plan_params
                    .iter()
                    .map(|p| (p.name.clone(), p.info.numel))
                    .collect();
                a.check_fits(&sizes)?;
                plan_params.iter().map(|p| a.count(&p.name)).collect()
            }
        };
        let backend = TchPlan::new(&plan_params, &mut self.scorer.object, &self.scorer.name);
        engine::mark(device, "plan: parameters gathered");
        let outcome = PlanDriver::new(backend, infos.clone())
            .with_allocation(counts)
            .run(&mut self.strategy, &target);
        engine::mark(device, "plan: strategy ran (scores, selections, decisions)");
        let outcome = outcome?;
        let mut backend = outcome.backend;
        if engine::step_timing() {
            let [a, b, c] = backend.host_time.map(|d| d.as_secs_f64() * 1e3);
            tracing::trace!(
                target: "birdbone_tch::steps",
                "plan: host time in scorer calls {a:.3} ms, taking their output {b:.3} ms, launching row selections {c:.3} ms"
            );
        }
        // Finiteness checks launched on the device during planning are read here, all at once,
        // before anything is written.
        let weight_checks =
            std::mem::replace(&mut backend.weight_checks, engine::WeightChecks::new(0, 0));
        let mut checks = std::mem::take(&mut backend.checks);
        check_scales(&plan_params, &std::mem::take(&mut backend.scales_to_check))?;
        for (p, c) in weight_checks.finish()? {
            checks.push((p, "weight", c));
        }
        for (p, what, check) in checks {
            if let Some(index) = check.get()? {
                return Err(HostError::NonFinite {
                    what,
                    param: plan_params[p as usize].name.clone(),
                    index,
                }
                .into());
            }
        }
        engine::mark(device, "plan: scale and finiteness checks");
        drop(backend);
        let decided = all_decided(outcome.decisions, &infos, &self.strategy.name)?;
        let entries = plan_params
            .into_iter()
            .zip(decided)
            .map(|(p, planned)| PlannedParam {
                name: p.name,
                weight: p.weight,
                planned,
            })
            .collect();
        sync(device);
        Ok(PrunePlan {
            entries,
            scorer: self.scorer.describe(),
            strategy: self.strategy.describe(),
            config: config.clone(),
            device,
            plan_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Checks each parameter against the components' devices and inputs and gathers what its
    /// scorer may be lent.
    /// The pass's parameters with what their components are lent; `strategy_inputs`: check
    /// the strategy's declared inputs are there (not when only allocating).
    fn gather(
        &self,
        params: Vec<(String, Tensor)>,
        inputs: PassInputs<'_>,
        strategy_inputs: bool,
    ) -> Result<Vec<PlanParam>> {
        let needs = self.scorer.info.capabilities.inputs;
        let mut plan_params = Vec::with_capacity(params.len());
        for (i, (name, weight)) in params.into_iter().enumerate() {
            let wdev = weight.device();
            let need = if wdev.is_cuda() {
                DeviceSet::CUDA
            } else {
                DeviceSet::CPU
            };
            for (c, what) in [
                (&self.scorer.info, "scorer"),
                (&self.strategy.info, "strategy"),
            ] {
                if !c.capabilities.devices.contains(need) {
                    return Err(HostError::Config {
                        component: c.name.to_string(),
                        message: format!("this {what} does not run on {wdev:?} tensors ('{name}')"),
                    }
                    .into());
                }
            }
            let act = inputs
                .stats
                .and_then(|s| s.get(&name))
                .map(|(t, n)| (t.shallow_clone(), n));
            if needs.contains(InputSet::ACTIVATION_STATS) && act.is_none() {
                return Err(HostError::Config {
                    component: self.scorer.name.clone(),
                    message: format!("it needs activation statistics and there are none for '{name}': run calibration first"),
                }
                .into());
            }
            let hessian = inputs
                .stats
                .and_then(|s| s.hessian(&name))
                .map(|h| (h.matrix.shallow_clone(), h.tokens, h.group));
            if strategy_inputs
                && self
                    .strategy
                    .info
                    .capabilities
                    .inputs
                    .contains(InputSet::HESSIAN)
                && hessian.is_none()
            {
                return Err(HostError::Config {
                    component: self.strategy.name.clone(),
                    message: format!("it needs the Hessian statistics (XᵀX of each Linear's inputs) and there are none for '{name}': run calibration first"),
                }
                .into());
            }
            let load = inputs.load.and_then(|l| l.get(&name)).cloned();
            let grad = weight.grad();
            let grad = grad.defined().then_some(grad);
            if needs.contains(InputSet::GRADIENTS) && grad.is_none() {
                return Err(HostError::Config {
                    component: self.scorer.name.clone(),
                    message: format!(
                        "it needs gradients and '{name}' has none: run a backward pass first"
                    ),
                }
                .into());
            }
            let info = param_info(i, &name, &weight, wdev)?;
            let protected = match inputs.protected_rows.and_then(|m| m.get(&name)) {
                Some(rows) if rows.f_any()?.int64_value(&[]) == 1 => {
                    if weight.dim() != 2 || rows.size() != [weight.size()[0]] {
                        birdbone_host::bail!(
                            "protected rows of '{name}' have shape {:?}; the weight is {:?}",
                            rows.size(),
                            weight.size()
                        );
                    }
                    Some(rows.f_to_device(weight.device())?.f_to_kind(Kind::Bool)?)
                }
                _ => None,
            };
            plan_params.push(PlanParam {
                name,
                info,
                weight,
                grad,
                act,
                hessian,
                load,
                protected,
            });
        }
        Ok(plan_params)
    }

    /// One block of a sequential calibration: prunes those of `names` (the block's weights) that
    /// `config.filter` selects, with `stats` collected on the block's inputs. `None` when the
    /// filter selects none of them.
    pub fn run_block(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        names: &[String],
        stats: &ActivationStats,
        config: &PassConfig,
    ) -> Result<Option<(PassReport, MaskSet)>> {
        let Some(block_config) = block_config(names, config) else {
            return Ok(None);
        };
        let inputs = PassInputs {
            stats: Some(stats),
            ..Default::default()
        };
        self.run(model, &block_config, inputs).map(Some)
    }

    pub(super) fn undo_policy_and_history(&mut self) -> (UndoPolicy, &mut UndoHistory) {
        (self.undo, &mut self.history)
    }

    /// Plans and commits one pass over `model`.
    pub fn run(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        config: &PassConfig,
        inputs: PassInputs<'_>,
    ) -> Result<(PassReport, MaskSet)> {
        let keep = self.undo.passes > 0;
        let (report, masks, journal) = self.plan(model, config, inputs)?.commit_with(
            self.undo.rollback,
            keep,
            self.undo.journal,
        )?;
        if let Some(j) = journal {
            self.history.push(j, &self.undo);
        }
        Ok((report, masks))
    }
}
