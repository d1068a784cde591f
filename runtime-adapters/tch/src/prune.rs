//! A pruning pass in two phases. *Plan* runs the scorer and the strategy and records a decision
//! per parameter; nothing in the model changes, so any failure (a plugin error or panic, a NaN,
//! a bad configuration, running out of memory) leaves it untouched. *Commit* then applies every
//! decision in place, under no_grad: the weights keep their storage, and no copy of them is
//! made.

use std::{collections::BTreeMap, time::Instant};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RNone, ROption, RResult, RSlice, RVec},
};
use birdbone_host_api::{
    Decision, DeviceSet, Granularity, HostOps_Ref, InputSet, NmPattern, ParamInfo, PlanContext,
    PlanContext_TO, PluginError, ScoreInputs, ScoreOut, ScoreRequest, ScorerBox, SelectScope,
    Selection, StrategyBox, Target,
};
use birdbone_select::{key_value, ParamQuota};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::{
    engine::{self, Count, FiniteCheck, RowSel, Rule, Scores},
    error::{Error, Result},
    mask::{MaskSet, ParamMask},
    ops::{guard, host_ops},
    params::{role_of, ParamFilter, ParamSource},
    registry::{Component, PluginRegistry},
    stats::ActivationStats,
    tensors::{self, device_of, dtype_of, Lent, Owner},
};

/// What a pass is asked for, besides its components.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PassConfig {
    /// Fraction of the selected weights to prune, in `[0, 1]`.
    pub sparsity: f64,
    /// An N:M pattern (`n` kept of every `m`), for strategies that use one.
    pub nm: Option<(u32, u32)>,
    /// Keep a 1-bit mask per weight after the pass (for re-applying after optimizer steps and
    /// for saving). Costs one bit per pruned parameter's weight.
    pub keep_masks: bool,
    /// Which parameters to prune.
    pub filter: ParamFilter,
}

impl Default for PassConfig {
    fn default() -> Self {
        PassConfig {
            sparsity: 0.5,
            nm: None,
            keep_masks: true,
            filter: ParamFilter::default(),
        }
    }
}

impl PassConfig {
    fn target(&self) -> Result<Target> {
        if !(0.0..=1.0).contains(&self.sparsity) {
            crate::bail!("sparsity must be between 0 and 1, got {}", self.sparsity);
        }
        if let Some((n, m)) = self.nm {
            if m == 0 || n > m || m > 32 {
                crate::bail!("N:M pattern {n}:{m} is not valid (need 0 <= N <= M, 1 <= M <= 32)");
            }
        }
        Ok(Target {
            sparsity: self.sparsity,
            nm: self.nm.map(|(n, m)| NmPattern { n, m }).into(),
        })
    }
}

/// One parameter's line in a [`PassReport`].
#[derive(Clone, Debug, Serialize)]
pub struct ParamReport {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Weights it has.
    pub numel: u64,
    /// Weights this pass pruned (set to zero) in it.
    pub pruned: u64,
    /// `pruned / numel`.
    pub sparsity: f64,
    /// What the strategy decided, in words.
    pub decision: String,
}

/// What a pass did.
#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    /// The scorer and its configuration.
    pub scorer: String,
    /// The strategy and its configuration.
    pub strategy: String,
    /// The requested sparsity.
    pub target_sparsity: f64,
    /// The requested N:M pattern, if any.
    pub nm: Option<(u32, u32)>,
    /// Where the weights live.
    pub device: String,
    /// Per parameter.
    pub params: Vec<ParamReport>,
    /// Weights in the pruned parameters.
    pub total: u64,
    /// Weights pruned.
    pub pruned: u64,
    /// `pruned / total`.
    pub sparsity: f64,
    /// Seconds planning took (scoring, selection, mask building).
    pub plan_seconds: f64,
    /// Seconds committing took (writing the weights).
    pub commit_seconds: f64,
}

impl PassReport {
    /// A table for a terminal.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<56} {:>16} {:>12} {:>9}\n",
            "parameter", "shape", "pruned", "sparsity"
        ));
        for p in &self.params {
            s.push_str(&format!(
                "{:<56} {:>16} {:>12} {:>8.2}%\n",
                p.name,
                format!("{:?}", p.shape),
                p.pruned,
                100.0 * p.sparsity
            ));
        }
        s.push_str(&format!(
            "total: {} of {} weights pruned ({:.4}%) by {} + {} on {}; plan {:.3} s, commit {:.3} s\n",
            self.pruned,
            self.total,
            100.0 * self.sparsity,
            self.scorer,
            self.strategy,
            self.device,
            self.plan_seconds,
            self.commit_seconds
        ));
        s
    }
}

/// Inputs to a pass besides the weights.
#[derive(Default, Clone, Copy)]
pub struct PassInputs<'a> {
    /// Activation statistics, for scorers that need them.
    pub stats: Option<&'a ActivationStats>,
    /// Rows no selection may prune (bool `[rows]` per parameter name; growth plates): their
    /// weights score above every other, so an exact selection takes its count elsewhere.
    pub protected_rows: Option<&'a BTreeMap<String, Tensor>>,
}

/// A scorer and a strategy, ready to run passes.
pub struct Pruner {
    scorer: Component<ScorerBox>,
    strategy: Component<StrategyBox>,
}

/// Parameters per batch of a per-row selection (see `HostPlan::select`).
const ROW_BATCH: usize = 32;

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
                return Err(Error::NonFinite {
                    what: "column scale (activation norms, which must be finite and non-negative)",
                    param: params[*p as usize].name.clone(),
                    index,
                });
            }
        }
    }
    Ok(())
}

fn describe<T>(c: &Component<T>) -> String {
    let cfg: Vec<String> = c
        .config
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect();
    if cfg.is_empty() {
        c.name.clone()
    } else {
        format!("{}({})", c.name, cfg.join(", "))
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
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
            scorer: registry.create_scorer(scorer, scorer_settings)?,
            strategy: registry.create_strategy(strategy, strategy_settings)?,
        })
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
                .map_err(|error| Error::Plugin {
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
        let params = config.filter.select(model)?;
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
            crate::bail!("no parameters to prune: the filter selected none");
        }
        let _g = tch::no_grad_guard();
        let device = params[0].1.device();
        engine::trace(device, "(before the plan)");
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
                    return Err(Error::Config {
                        component: c.name.to_string(),
                        message: format!("this {what} does not run on {wdev:?} tensors ('{name}')"),
                    });
                }
            }
            let act = inputs
                .stats
                .and_then(|s| s.get(&name))
                .map(|(t, n)| (t.shallow_clone(), n));
            if needs.contains(InputSet::ACTIVATION_STATS) && act.is_none() {
                return Err(Error::Config {
                    component: self.scorer.name.clone(),
                    message: format!("it needs activation statistics and there are none for '{name}': run calibration first"),
                });
            }
            let grad = weight.grad();
            let grad = grad.defined().then_some(grad);
            if needs.contains(InputSet::GRADIENTS) && grad.is_none() {
                return Err(Error::Config {
                    component: self.scorer.name.clone(),
                    message: format!(
                        "it needs gradients and '{name}' has none: run a backward pass first"
                    ),
                });
            }
            let info = param_info(i, &name, &weight, wdev)?;
            let protected = match inputs.protected_rows.and_then(|m| m.get(&name)) {
                Some(rows) if rows.f_any()?.int64_value(&[]) == 1 => {
                    if weight.dim() != 2 || rows.size() != [weight.size()[0]] {
                        crate::bail!(
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
                protected,
            });
        }
        engine::trace(device, "plan: parameters checked");
        let infos: RVec<ParamInfo> = plan_params.iter().map(|p| p.info.clone()).collect();
        let mut ctx = HostPlan {
            params: &plan_params,
            infos,
            scorer: &mut self.scorer.object,
            scorer_name: &self.scorer.name,
            selections: Vec::new(),
            decisions: (0..plan_params.len()).map(|_| None).collect(),
            checks: Vec::new(),
            weight_checks: engine::WeightChecks::new(
                plan_params.len(),
                plan_params.iter().map(|p| p.info.numel).sum(),
            ),
            scales_to_check: Vec::new(),
            fused: (0..plan_params.len()).map(|_| None).collect(),
            error: None,
            host_time: Default::default(),
        };
        let strategy_name = self.strategy.name.clone();
        engine::trace(device, "plan: parameters gathered");
        let result = {
            let obj = PlanContext_TO::from_ptr(&mut ctx, TD_Opaque);
            self.strategy.object.select(obj, &target).into_result()
        };
        engine::trace(device, "plan: strategy ran (scores, selections, decisions)");
        if engine::tracing() {
            let [a, b, c] = ctx.host_time.map(|d| d.as_secs_f64() * 1e3);
            eprintln!("trace plan: host time in scorer calls {a:.3} ms, taking their output {b:.3} ms, launching row selections {c:.3} ms");
        }
        if let Err(error) = result {
            // Prefer the host's own account of the failure (it names the parameter and stage).
            return Err(ctx.error.take().unwrap_or(Error::Plugin {
                component: strategy_name,
                param: "the pass".into(),
                error,
            }));
        }
        // Finiteness checks launched on the device during planning are read here, all at once,
        // before anything is written.
        let weight_checks =
            std::mem::replace(&mut ctx.weight_checks, engine::WeightChecks::new(0, 0));
        let mut checks = std::mem::take(&mut ctx.checks);
        check_scales(&plan_params, &std::mem::take(&mut ctx.scales_to_check))?;
        for (p, c) in weight_checks.finish()? {
            checks.push((p, "weight", c));
        }
        for (p, what, check) in checks {
            if let Some(index) = check.get()? {
                return Err(Error::NonFinite {
                    what,
                    param: plan_params[p as usize].name.clone(),
                    index,
                });
            }
        }
        engine::trace(device, "plan: scale and finiteness checks");
        let decisions = std::mem::take(&mut ctx.decisions);
        drop(ctx);
        let mut entries = Vec::with_capacity(plan_params.len());
        for (p, d) in plan_params.into_iter().zip(decisions) {
            let Some(planned) = d else {
                return Err(Error::Plugin {
                    component: strategy_name,
                    param: p.name.clone(),
                    error: PluginError::invalid(
                        "the strategy returned without deciding this parameter",
                    ),
                });
            };
            entries.push(PlannedParam {
                name: p.name,
                weight: p.weight,
                planned,
            });
        }
        sync(device);
        Ok(PrunePlan {
            entries,
            scorer: describe(&self.scorer),
            strategy: describe(&self.strategy),
            config: config.clone(),
            device,
            plan_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Plans and commits one pass over `model`.
    pub fn run(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        config: &PassConfig,
        inputs: PassInputs<'_>,
    ) -> Result<(PassReport, MaskSet)> {
        self.plan(model, config, inputs)?.commit()
    }
}

fn param_info(index: usize, name: &str, w: &Tensor, device: Device) -> Result<ParamInfo> {
    let dtype = dtype_of(w.kind()).ok_or_else(|| Error::Shape {
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

struct PlanParam {
    name: String,
    info: ParamInfo,
    weight: Tensor,
    grad: Option<Tensor>,
    act: Option<(Tensor, u64)>,
    protected: Option<Tensor>,
}

enum Planned {
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
}

struct PlannedParam {
    name: String,
    weight: Tensor,
    planned: Planned,
}

/// A planned pass: decisions made, model untouched. Dropping it abandons the pass.
pub struct PrunePlan {
    entries: Vec<PlannedParam>,
    scorer: String,
    strategy: String,
    config: PassConfig,
    device: Device,
    plan_seconds: f64,
}

impl PrunePlan {
    /// Weights the plan will prune.
    pub fn pruned(&self) -> Result<u64> {
        self.entries
            .iter()
            .map(|e| match &e.planned {
                Planned::Keep => Ok(0),
                Planned::Lazy { pruned, .. } => Ok(*pruned),
                Planned::Mask { pruned, .. } => pruned.get(),
            })
            .sum()
    }

    /// Applies every decision in place and returns the report and (when the pass config asks)
    /// the masks.
    pub fn commit(self) -> Result<(PassReport, MaskSet)> {
        let started = Instant::now();
        let _g = tch::no_grad_guard();
        let mut masks = MaskSet::new();
        let mut params = Vec::with_capacity(self.entries.len());
        let keep = self.config.keep_masks;
        // Every write is launched in batches first (a handful of kernels on a GPU)...
        let lazy: Vec<usize> = (0..self.entries.len())
            .filter(|&i| matches!(self.entries[i].planned, Planned::Lazy { .. }))
            .collect();
        let items: Vec<engine::PruneItem<'_>> = lazy
            .iter()
            .map(|&i| match &self.entries[i].planned {
                Planned::Lazy { scores, rule, .. } => engine::PruneItem {
                    weight: &self.entries[i].weight,
                    scores,
                    rule,
                },
                _ => unreachable!("filtered"),
            })
            .collect();
        engine::trace(self.device, "(before the commit)");
        let mut lazy_out = engine::prune_many(&items, keep)?.into_iter();
        engine::trace(self.device, "commit: rules applied");
        let masked: Vec<usize> = (0..self.entries.len())
            .filter(|&i| matches!(self.entries[i].planned, Planned::Mask { .. }))
            .collect();
        let mask_items: Vec<(&Tensor, &Tensor)> = masked
            .iter()
            .map(|&i| match &self.entries[i].planned {
                Planned::Mask { bits, .. } => (&self.entries[i].weight, bits),
                _ => unreachable!("filtered"),
            })
            .collect();
        let mut mask_out = engine::apply_masks(&mask_items)?.into_iter();
        // ...then the report and masks are gathered.
        let mut counts = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let numel = e.weight.numel() as u64;
            let (pruned, what, mask) = match &e.planned {
                Planned::Keep => (Count::Ready(0), "keep".to_string(), None),
                Planned::Lazy { what, .. } => {
                    let (mask, pruned) = lazy_out.next().expect("one result per item");
                    (pruned, what.clone(), mask)
                }
                Planned::Mask { bits, what, .. } => (
                    mask_out.next().expect("one result per item"),
                    what.clone(),
                    keep.then(|| bits.shallow_clone()),
                ),
            };
            if let Some(bits) = mask {
                masks.insert(
                    e.name.clone(),
                    ParamMask {
                        shape: e.weight.size(),
                        bits,
                    },
                );
            }
            counts.push(pruned);
            params.push(ParamReport {
                name: e.name.clone(),
                shape: e.weight.size(),
                numel,
                pruned: 0,
                sparsity: 0.0,
                decision: what,
            });
        }
        sync(self.device);
        engine::trace(self.device, "commit: masks and report");
        let commit_seconds = started.elapsed().as_secs_f64();
        // Counts come back after every write was launched: one wait on a GPU.
        for (p, c) in params.iter_mut().zip(&counts) {
            p.pruned = c.get()?;
            p.sparsity = p.pruned as f64 / p.numel.max(1) as f64;
        }
        let total: u64 = params.iter().map(|p| p.numel).sum();
        let pruned: u64 = params.iter().map(|p| p.pruned).sum();
        let report = PassReport {
            scorer: self.scorer,
            strategy: self.strategy,
            target_sparsity: self.config.sparsity,
            nm: self.config.nm,
            device: format!("{:?}", self.device),
            params,
            total,
            pruned,
            sparsity: pruned as f64 / total.max(1) as f64,
            plan_seconds: self.plan_seconds,
            commit_seconds,
        };
        Ok((report, masks))
    }
}

enum SelRecord {
    Threshold {
        params: Vec<u32>,
        quotas: Vec<ParamQuota>,
    },
    PerRow {
        param: u32,
        rows: RowSel,
        k: u64,
    },
}

struct HostPlan<'a> {
    params: &'a [PlanParam],
    infos: RVec<ParamInfo>,
    scorer: &'a mut ScorerBox,
    scorer_name: &'a str,
    selections: Vec<SelRecord>,
    decisions: Vec<Option<Planned>>,
    /// Finiteness checks still running on the device: (parameter, what, check).
    checks: Vec<(u32, &'static str, FiniteCheck)>,
    /// Weights whose finiteness is checked before anything is written (launched in batches on
    /// CUDA while the strategy decides, read at the end of planning).
    weight_checks: engine::WeightChecks,
    /// Column scales returned by the scorer, validated in one batch at the end of planning
    /// (one check per parameter would cost a device round trip each).
    scales_to_check: Vec<(u32, Tensor)>,
    /// Fused scores per parameter, kept from the first call: they cost nothing to hold, and a
    /// second scorer call would cost host operations and launches per parameter.
    fused: Vec<Option<Scores>>,
    error: Option<Error>,
    /// With BIRDBONE_TRACE=1: host time in the scorer's calls (lending, the plugin, its host
    /// operations), in taking its output, and in launching row selections.
    host_time: [std::time::Duration; 3],
}

impl HostPlan<'_> {
    fn param(&self, p: u32) -> Result<&PlanParam> {
        self.params.get(p as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "parameter index {p} is out of range (the pass has {})",
                self.params.len()
            ))
        })
    }

    /// The scorer's scores of parameter `p`, with protected rows lifted above every other score.
    /// Element scores of `params`, as one batch of scorer calls: square roots the scorer asks
    /// for run together at its end (see `crate::deferred`).
    fn score_batch(&mut self, params: &[u32]) -> Result<Vec<Scores>> {
        crate::deferred::batch(|| {
            params
                .iter()
                .map(|&p| self.score(p, ScoreRequest::ELEMENTS))
                .collect()
        })
    }

    fn score(&mut self, p: u32, request: ScoreRequest) -> Result<Scores> {
        let scores = self.raw_score(p, request)?;
        match &self.params[p as usize].protected {
            Some(rows) if request.granularity == Granularity::Unstructured => {
                crate::deferred::flush()?;
                let dense = scores.materialize()?;
                let cover = rows.f_unsqueeze(1)?.f_expand_as(&dense)?;
                let _ = dense
                    .shallow_clone()
                    .f_masked_fill_(&cover, f32::MAX as f64)?;
                Ok(Scores::Dense(dense))
            }
            _ => Ok(scores),
        }
    }

    /// Calls the scorer on parameter `p`.
    fn raw_score(&mut self, p: u32, request: ScoreRequest) -> Result<Scores> {
        if request.granularity == Granularity::Unstructured {
            if let Some(s) = self.fused.get(p as usize).and_then(Option::as_ref) {
                return Ok(s.shallow_clone());
            }
        }
        let params = self.params;
        let pp = params.get(p as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "parameter index {p} is out of range (the pass has {})",
                params.len()
            ))
        })?;
        let started = engine::tracing().then(std::time::Instant::now);
        let mut lent = Lent::default();
        let inputs = ScoreInputs {
            weight: lent.lend(&pp.weight)?,
            grad: match &pp.grad {
                Some(g) => ROption::RSome(lent.lend(g)?),
                None => RNone,
            },
            act_sq_sums: match &pp.act {
                Some((t, _)) => ROption::RSome(lent.lend(t)?),
                None => RNone,
            },
            act_tokens: pp.act.as_ref().map_or(0, |(_, n)| *n),
        };
        let out = self
            .scorer
            .score(&pp.info, &inputs, request)
            .into_result()
            .map_err(|error| Error::Plugin {
                component: self.scorer_name.to_string(),
                param: pp.name.clone(),
                error,
            })?;
        drop(lent);
        let called = started.map(|t| {
            self.host_time[0] += t.elapsed();
            std::time::Instant::now()
        });
        let out = self.take_score(p, request, out);
        if let Some(t) = called {
            self.host_time[1] += t.elapsed();
        }
        out
    }

    /// The scorer's output for parameter `p` as the host's scores (validated).
    fn take_score(&mut self, p: u32, request: ScoreRequest, out: ScoreOut) -> Result<Scores> {
        let pp = &self.params[p as usize];
        let bad = |message: String| Error::Plugin {
            component: self.scorer_name.to_string(),
            param: pp.name.clone(),
            error: PluginError::invalid(message),
        };
        let weight = &pp.weight;
        match out {
            ScoreOut::Magnitude { column_scale } => {
                if request.granularity != Granularity::Unstructured {
                    return Err(bad(format!(
                        "returned fused magnitude scores for a {:?} request",
                        request.granularity
                    )));
                }
                let scale = match column_scale.into_option() {
                    None => None,
                    Some(t) => {
                        // Left pending when deferred (Wanda's sqrt): the scale is read only
                        // after the batch of scorer calls, unless it must move.
                        let s = tensors::take_deferred(t.id)?;
                        if s.device() != weight.device() {
                            crate::deferred::flush()?;
                        }
                        let s = engine::aligned_scale(&s.f_to_device(weight.device())?)?;
                        let cols = *weight.size().last().unwrap_or(&1);
                        if s.size() != [cols] {
                            return Err(bad(format!(
                                "column scale has shape {:?}; the weight has {cols} columns",
                                s.size()
                            )));
                        }
                        self.scales_to_check.push((p, s.shallow_clone()));
                        Some(s)
                    }
                };
                let scores = Scores::Magnitude {
                    weight: weight.shallow_clone(),
                    scale,
                };
                self.fused[p as usize] = Some(scores.shallow_clone());
                Ok(scores)
            }
            ScoreOut::Dense { scores } => {
                let t = tensors::take(scores.id)?;
                let expect = match request.granularity {
                    Granularity::Unstructured | Granularity::NM => weight.numel(),
                    Granularity::Rows => weight.size()[0] as usize,
                    Granularity::Columns => *weight.size().last().unwrap_or(&1) as usize,
                };
                if t.numel() != expect || !t.is_floating_point() || t.device() != weight.device() {
                    return Err(bad(format!(
                        "returned scores of shape {:?} ({:?} on {:?}); expected {expect} floats on {:?}",
                        t.size(),
                        t.kind(),
                        t.device(),
                        weight.device()
                    )));
                }
                let t = if matches!(t.kind(), Kind::Float | Kind::Half | Kind::BFloat16) {
                    t
                } else {
                    t.f_to_kind(Kind::Float)?
                };
                Ok(Scores::Dense(
                    t.f_reshape(weight.size().as_slice())?.f_contiguous()?,
                ))
            }
        }
    }

    fn name_non_finite(&self, p: u32, e: Error) -> Error {
        match e {
            Error::NonFinite { what, index, .. } => Error::NonFinite {
                what,
                param: self.params[p as usize].name.clone(),
                index,
            },
            other => other,
        }
    }

    /// Queues a finiteness check of a weight, read at the end of planning.
    fn check_weight_finite(&mut self, p: u32) -> Result<()> {
        self.param(p)?;
        let params = self.params;
        self.weight_checks.queue(p, &params[p as usize].weight)
    }

    /// Fails now when the answer is known, else reads it at the end of planning.
    fn defer_check(&mut self, p: u32, what: &'static str, check: FiniteCheck) -> Result<()> {
        match check {
            FiniteCheck::Ready(Some(index)) => Err(Error::NonFinite {
                what,
                param: self.params[p as usize].name.clone(),
                index,
            }),
            FiniteCheck::Ready(None) => Ok(()),
            pending => {
                self.checks.push((p, what, pending));
                Ok(())
            }
        }
    }

    fn select(&mut self, params: &[u32], ks: &[u64], scope: SelectScope) -> Result<Vec<Selection>> {
        for &p in params {
            self.param(p)?;
        }
        let mut out = Vec::new();
        match scope {
            SelectScope::Global => {
                if ks.len() != 1 {
                    crate::bail!("a global selection takes one count, got {}", ks.len());
                }
                out.push(self.select_together(params, ks[0])?);
            }
            SelectScope::PerParam => {
                if ks.len() != params.len() {
                    crate::bail!(
                        "a per-parameter selection takes one count per parameter ({} for {})",
                        ks.len(),
                        params.len()
                    );
                }
                let scores: Vec<Scores> = self.score_batch(params)?;
                if scores.iter().all(|s| matches!(s, Scores::Magnitude { .. })) {
                    // Fused scores cost nothing to hold: every parameter in one batch.
                    let quotas = engine::select_each(&scores, ks).map_err(|(i, e)| match i {
                        Some(i) => self.name_non_finite(params[i], e),
                        None => e,
                    })?;
                    for ((&p, q), s) in params.iter().zip(quotas).zip(&scores) {
                        let id = self.selections.len() as u32;
                        let threshold = if q.pruned() == 0 {
                            f64::NEG_INFINITY
                        } else {
                            key_value(q.threshold) as f64
                        };
                        self.selections.push(SelRecord::Threshold {
                            params: vec![p],
                            quotas: vec![q],
                        });
                        out.push(Selection {
                            id,
                            pruned: q.pruned(),
                            considered: s.numel(),
                            threshold,
                        });
                    }
                } else {
                    drop(scores);
                    for (&p, &k) in params.iter().zip(ks) {
                        out.push(self.select_together(&[p], k)?);
                    }
                }
            }
            SelectScope::PerRow => {
                if ks.len() != params.len() {
                    crate::bail!(
                        "a per-row selection takes one count per parameter ({} for {})",
                        ks.len(),
                        params.len()
                    );
                }
                for &p in params {
                    if self.params[p as usize].protected.is_some() {
                        crate::bail!(
                            "'{}' has protected rows, but a per-row selection prunes the same count in every row: use a per-parameter or global strategy with growth plates",
                            self.params[p as usize].name
                        );
                    }
                    let dims = self.params[p as usize].weight.size();
                    if dims.len() != 2 {
                        crate::bail!(
                            "per-row selection needs a 2-D parameter; '{}' is {dims:?}",
                            self.params[p as usize].name
                        );
                    }
                }
                // Batches of parameters: the device selects (or checks) one batch while the
                // scorer runs over the next, instead of idling through every scorer call first.
                let mut scores = Vec::with_capacity(params.len());
                let mut rows = Vec::with_capacity(params.len());
                let mut checks = Vec::with_capacity(params.len());
                for (batch, batch_ks) in params.chunks(ROW_BATCH).zip(ks.chunks(ROW_BATCH)) {
                    let batch_scores: Vec<Scores> = self.score_batch(batch)?;
                    let started = engine::tracing().then(std::time::Instant::now);
                    let (r, c) =
                        engine::select_rows(&batch_scores, batch_ks).map_err(|(i, e)| match i {
                            Some(i) => self.name_non_finite(batch[i], e),
                            None => e,
                        })?;
                    if let Some(t) = started {
                        self.host_time[2] += t.elapsed();
                    }
                    scores.extend(batch_scores);
                    rows.extend(r);
                    checks.extend(c);
                }
                for (((&p, &k), (rows, check)), s) in params
                    .iter()
                    .zip(ks)
                    .zip(rows.into_iter().zip(checks))
                    .zip(&scores)
                {
                    self.defer_check(p, "score", check)?;
                    let id = self.selections.len() as u32;
                    let n_rows = self.params[p as usize].weight.size()[0] as u64;
                    self.selections
                        .push(SelRecord::PerRow { param: p, rows, k });
                    out.push(Selection {
                        id,
                        pruned: k * n_rows,
                        considered: s.numel(),
                        threshold: f64::NAN,
                    });
                }
            }
        }
        Ok(out)
    }

    fn select_together(&mut self, params: &[u32], k: u64) -> Result<Selection> {
        let Some(&first) = params.first() else {
            crate::bail!("a selection over no parameters")
        };
        let device = self.params[first as usize].weight.device();
        if let Some(&p) = params
            .iter()
            .find(|&&p| self.params[p as usize].weight.device() != device)
        {
            crate::bail!(
                "one selection cannot span devices ('{}' is not on {device:?})",
                self.params[p as usize].name
            );
        }
        let mut sel = engine::global_selector(device, k, params.len())?;
        engine::trace(device, "global: selector made");
        let named = |this: &Self, sel: &dyn engine::GlobalSel, e: Error| match sel.bad_param() {
            Some(i) => this.name_non_finite(params[i], e),
            None => e,
        };
        for (i, &p) in params.iter().enumerate() {
            let s = self.score(p, ScoreRequest::ELEMENTS)?;
            sel.feed_high(i, &s)
                .map_err(|e| named(self, sel.as_ref(), e))?;
        }
        engine::trace(device, "global: scores fed");
        if sel
            .needs_low_pass()
            .map_err(|e| named(self, sel.as_ref(), e))?
        {
            for (i, &p) in params.iter().enumerate() {
                let s = self.score(p, ScoreRequest::ELEMENTS)?;
                sel.feed_low(i, &s)
                    .map_err(|e| named(self, sel.as_ref(), e))?;
            }
        }
        let g = sel.finish()?;
        let id = self.selections.len() as u32;
        let threshold = if k == 0 {
            f64::NEG_INFINITY
        } else {
            key_value(g.threshold) as f64
        };
        self.selections.push(SelRecord::Threshold {
            params: params.to_vec(),
            quotas: g.params,
        });
        Ok(Selection {
            id,
            pruned: g.pruned,
            considered: g.considered,
            threshold,
        })
    }

    fn decide(&mut self, p: u32, decision: Decision) -> Result<()> {
        self.param(p)?;
        let plan_params = self.params;
        let name = &plan_params[p as usize].name;
        if self.decisions[p as usize].is_some() {
            crate::bail!("parameter '{name}' was already decided");
        }
        let planned = match decision {
            Decision::Keep => Planned::Keep,
            Decision::Apply { selection } => {
                let (rule, what) = match self.selections.get(selection as usize) {
                    // Strategies mostly select parameters in order: try p's own place first.
                    Some(SelRecord::Threshold { params, quotas }) => match params
                        .get(p as usize)
                        .filter(|&&q| q == p)
                        .map(|_| p as usize)
                        .or_else(|| params.iter().position(|&q| q == p))
                    {
                        Some(i) => (Rule::Threshold(quotas[i]), format!("selection {selection}")),
                        None => crate::bail!("selection {selection} does not cover '{name}'"),
                    },
                    Some(SelRecord::PerRow { param, rows, k }) if *param == p => {
                        (Rule::PerRow(rows.shallow_clone()), format!("{k} per row"))
                    }
                    Some(SelRecord::PerRow { .. }) => {
                        crate::bail!("selection {selection} does not cover '{name}'")
                    }
                    None => crate::bail!("there is no selection {selection}"),
                };
                self.planned_rule(p, rule, what)?
            }
            Decision::NM {
                pattern: NmPattern { n, m },
            } => {
                let cols = *self.params[p as usize].weight.size().last().unwrap_or(&0);
                if m == 0 || n > m || m > 32 || cols % m as i64 != 0 {
                    crate::bail!("{n}:{m} does not fit '{name}' (rows of {cols}; need N <= M <= 32 and M dividing the row)");
                }
                self.planned_rule(p, Rule::NM { n, m }, format!("{n}:{m}"))?
            }
            Decision::Mask { mask } => {
                let keep = tensors::get(mask)?;
                let w = &self.params[p as usize].weight;
                if keep.size() != w.size() {
                    crate::bail!(
                        "mask for '{name}' has shape {:?}; the weight is {:?}",
                        keep.size(),
                        w.size()
                    );
                }
                self.check_weight_finite(p)?;
                let bits = engine::pack_keep(&keep.f_to_device(w.device())?)?;
                let kept = keep.f_ne(0)?.f_sum(Kind::Int64)?.int64_value(&[]) as u64;
                Planned::Mask {
                    bits,
                    pruned: Count::Ready(w.numel() as u64 - kept),
                    what: "explicit mask".into(),
                }
            }
        };
        self.decisions[p as usize] = Some(planned);
        Ok(())
    }

    fn planned_rule(&mut self, p: u32, rule: Rule, what: String) -> Result<Planned> {
        let scores = self.score(p, ScoreRequest::ELEMENTS)?;
        let numel = scores.numel();
        let fused_checked = matches!(
            (&scores, &rule),
            (
                Scores::Magnitude { .. },
                Rule::Threshold(_) | Rule::PerRow(_)
            )
        );
        if !fused_checked {
            // Selections over fused magnitude scores already read every weight; other paths
            // check the weight here, before anything is written.
            self.check_weight_finite(p)?;
        }
        match scores {
            Scores::Magnitude { .. } => {
                let pruned =
                    match &rule {
                        Rule::Threshold(q) => q.pruned(),
                        Rule::PerRow(_) => {
                            let rows = numel / scores.cols();
                            let Some(SelRecord::PerRow { k, .. }) = self.selections.iter().find(
                                |s| matches!(s, SelRecord::PerRow { param, .. } if *param == p),
                            ) else {
                                unreachable!("a per-row rule comes from a per-row selection")
                            };
                            k * rows
                        }
                        Rule::NM { n, m } => numel / *m as u64 * (*m - *n) as u64,
                    };
                Ok(Planned::Lazy {
                    scores,
                    rule,
                    pruned,
                    what,
                })
            }
            Scores::Dense(_) => {
                let (bits, pruned) =
                    engine::build_mask(&scores, &rule).map_err(|e| self.name_non_finite(p, e))?;
                Ok(Planned::Mask { bits, pruned, what })
            }
        }
    }

    fn record<T>(&mut self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if self.error.is_none() {
                self.error = Some(clone_error(e));
            }
        }
        r
    }
}

/// A copy of an error for the pass's account (errors are not `Clone`: libtorch's aren't).
fn clone_error(e: &Error) -> Error {
    match e {
        Error::Plugin {
            component,
            param,
            error,
        } => Error::Plugin {
            component: component.clone(),
            param: param.clone(),
            error: error.clone(),
        },
        Error::NonFinite { what, param, index } => Error::NonFinite {
            what,
            param: param.clone(),
            index: *index,
        },
        Error::Config { component, message } => Error::Config {
            component: component.clone(),
            message: message.clone(),
        },
        other => Error::Invalid(other.to_string()),
    }
}

impl PlanContext for HostPlan<'_> {
    fn params(&self) -> RVec<ParamInfo> {
        self.infos.clone()
    }

    fn host(&self) -> HostOps_Ref {
        host_ops()
    }

    fn scores(
        &mut self,
        param: u32,
        request: ScoreRequest,
    ) -> RResult<birdbone_host_api::Tensor, PluginError> {
        guard(|| {
            let r = self.score(param, request).and_then(|s| match s {
                Scores::Dense(t) => Ok(t),
                s @ Scores::Magnitude { .. } => s.materialize(),
            });
            let t = self.record(r)?;
            tensors::register(t, Owner::Plugin)
        })
    }

    fn select_k_smallest(
        &mut self,
        params: RSlice<'_, u32>,
        ks: RSlice<'_, u64>,
        scope: SelectScope,
    ) -> RResult<RVec<Selection>, PluginError> {
        guard(|| {
            let r = self.select(params.as_slice(), ks.as_slice(), scope);
            self.record(r).map(RVec::from)
        })
    }

    fn decide(&mut self, param: u32, decision: Decision) -> RResult<(), PluginError> {
        guard(|| {
            let r = HostPlan::decide(self, param, decision);
            self.record(r)
        })
    }
}
