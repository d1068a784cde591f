//! The tensor work of planning over tch: lending weights to the scorer, taking its scores,
//! exact selections on the weights' device, and what the commit will apply. The checks and
//! bookkeeping of the strategy's requests are the host's ([`birdbone_host::plan`]).

use std::time::Duration;

use abi_stable::std_types::{RNone, ROption, RResult};
use birdbone_host::plan::PlanBackend;
use birdbone_host_api::{
    self as api, Granularity, Hessian, HostOps_Ref, LoadPoint, PluginError, ScoreInputs, ScoreOut,
    ScoreRequest, ScorerBox, TensorId,
};
use birdbone_select::GlobalSelection;
use tch::{Kind, Tensor};

use super::{
    plan::{PlanParam, Planned},
    ROW_BATCH,
};
use crate::{
    deferred,
    engine::{self, Count, FiniteCheck, RowSel, Rule, Scores},
    error::{Error, HostError, Result},
    ops::{guard, host_ops},
    tensors::{self, Lent, Owner},
};

/// Planning's tensor side for one pass.
pub(super) struct TchPlan<'a> {
    pub params: &'a [PlanParam],
    pub scorer: &'a mut ScorerBox,
    pub scorer_name: &'a str,
    /// Finiteness checks still running on the device: (parameter, what, check).
    pub checks: Vec<(u32, &'static str, FiniteCheck)>,
    /// Weights whose finiteness is checked before anything is written (launched in batches on
    /// CUDA while the strategy decides, read at the end of planning).
    pub weight_checks: engine::WeightChecks,
    /// Column scales returned by the scorer, validated in one batch at the end of planning
    /// (one check per parameter would cost a device round trip each).
    pub scales_to_check: Vec<(u32, Tensor)>,
    /// Fused scores per parameter, kept from the first call: they cost nothing to hold, and a
    /// second scorer call would cost host operations and launches per parameter.
    fused: Vec<Option<Scores>>,
    /// Host time in the scorer's calls (lending, the plugin, its host operations), in taking
    /// its output, and in launching row selections; logged when step timings are on.
    pub host_time: [Duration; 3],
    /// Weights and Hessians lent to the strategy (ABI 1.1), until planning ends.
    lent: Lent,
}

impl<'a> TchPlan<'a> {
    pub fn new(params: &'a [PlanParam], scorer: &'a mut ScorerBox, scorer_name: &'a str) -> Self {
        TchPlan {
            params,
            scorer,
            scorer_name,
            checks: Vec::new(),
            weight_checks: engine::WeightChecks::new(
                params.len(),
                params.iter().map(|p| p.info.numel).sum(),
            ),
            scales_to_check: Vec::new(),
            fused: (0..params.len()).map(|_| None).collect(),
            host_time: Default::default(),
            lent: Lent::default(),
        }
    }

    /// Element scores of `params`, as one batch of scorer calls: square roots the scorer asks
    /// for run together at its end (see `crate::deferred`).
    fn score_batch(&mut self, params: &[u32]) -> Result<Vec<Scores>> {
        deferred::batch(|| {
            params
                .iter()
                .map(|&p| self.score(p, ScoreRequest::ELEMENTS))
                .collect()
        })
    }

    /// The scorer's scores of parameter `p`, with protected rows lifted above every other score.
    fn score(&mut self, p: u32, request: ScoreRequest) -> Result<Scores> {
        let scores = self.raw_score(p, request)?;
        match &self.params[p as usize].protected {
            Some(rows) if request.granularity == Granularity::Unstructured => {
                deferred::flush()?;
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

    /// Calls the scorer on parameter `p` (an index the host has checked).
    fn raw_score(&mut self, p: u32, request: ScoreRequest) -> Result<Scores> {
        if request.granularity == Granularity::Unstructured {
            if let Some(s) = self.fused[p as usize].as_ref() {
                return Ok(s.shallow_clone());
            }
        }
        let pp = &self.params[p as usize];
        let started = engine::step_timing().then(std::time::Instant::now);
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
            .map_err(|error| HostError::Plugin {
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
        let bad = |message: String| -> Error {
            HostError::Plugin {
                component: self.scorer_name.to_string(),
                param: pp.name.clone(),
                error: PluginError::invalid(message),
            }
            .into()
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
                            deferred::flush()?;
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

    /// The error `e` with the name of parameter `p` when it is a non-finite value.
    fn name_non_finite(&self, p: u32, e: Error) -> Error {
        match e {
            Error::Host(HostError::NonFinite { what, index, .. }) => HostError::NonFinite {
                what,
                param: self.params[p as usize].name.clone(),
                index,
            }
            .into(),
            other => other,
        }
    }

    /// Queues a finiteness check of a weight, read at the end of planning.
    fn check_weight_finite(&mut self, p: u32) -> Result<()> {
        let params = self.params;
        self.weight_checks.queue(p, &params[p as usize].weight)
    }

    /// Fails now when the answer is known, else reads it at the end of planning.
    fn defer_check(&mut self, p: u32, what: &'static str, check: FiniteCheck) -> Result<()> {
        match check {
            FiniteCheck::Ready(Some(index)) => Err(HostError::NonFinite {
                what,
                param: self.params[p as usize].name.clone(),
                index,
            }
            .into()),
            FiniteCheck::Ready(None) => Ok(()),
            pending => {
                self.checks.push((p, what, pending));
                Ok(())
            }
        }
    }
}

impl PlanBackend for TchPlan<'_> {
    type Error = Error;
    type RowSel = RowSel;
    type Planned = Planned;

    fn guard<T>(f: impl FnOnce() -> Result<T>) -> RResult<T, PluginError> {
        guard(f)
    }

    fn copy_error(e: &Error) -> Error {
        e.copy()
    }

    fn host_ops(&self) -> HostOps_Ref {
        host_ops()
    }

    fn has_protected_rows(&self, p: u32) -> bool {
        self.params[p as usize].protected.is_some()
    }

    fn plugin_scores(&mut self, p: u32, request: ScoreRequest) -> Result<api::Tensor> {
        let t = match self.score(p, request)? {
            Scores::Dense(t) => t,
            s @ Scores::Magnitude { .. } => s.materialize()?,
        };
        tensors::register(t, Owner::Plugin)
    }

    fn select_global(&mut self, params: &[u32], k: u64) -> Result<GlobalSelection> {
        let device = self.params[params[0] as usize].weight.device();
        if let Some(&p) = params
            .iter()
            .find(|&&p| self.params[p as usize].weight.device() != device)
        {
            birdbone_host::bail!(
                "one selection cannot span devices ('{}' is not on {device:?})",
                self.params[p as usize].name
            );
        }
        let mut sel = engine::global_selector(device, k, params.len())?;
        engine::mark(device, "global: selector made");
        let named = |this: &Self, sel: &dyn engine::GlobalSel, e: Error| match sel.bad_param() {
            Some(i) => this.name_non_finite(params[i], e),
            None => e,
        };
        for (i, &p) in params.iter().enumerate() {
            let s = self.score(p, ScoreRequest::ELEMENTS)?;
            sel.feed_high(i, &s)
                .map_err(|e| named(self, sel.as_ref(), e))?;
        }
        engine::mark(device, "global: scores fed");
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
        sel.finish()
    }

    fn select_each(&mut self, params: &[u32], ks: &[u64]) -> Result<Vec<GlobalSelection>> {
        let scores: Vec<Scores> = self.score_batch(params)?;
        if !scores.iter().all(|s| matches!(s, Scores::Magnitude { .. })) {
            drop(scores);
            return params
                .iter()
                .zip(ks)
                .map(|(&p, &k)| self.select_global(&[p], k))
                .collect();
        }
        // Fused scores cost nothing to hold: every parameter in one batch.
        let quotas = engine::select_each(&scores, ks).map_err(|(i, e)| match i {
            Some(i) => self.name_non_finite(params[i], e),
            None => e,
        })?;
        Ok(quotas
            .into_iter()
            .zip(&scores)
            .map(|(q, s)| GlobalSelection {
                threshold: q.threshold,
                pruned: q.pruned(),
                considered: s.numel(),
                params: vec![q],
            })
            .collect())
    }

    fn select_rows(&mut self, params: &[u32], ks: &[u64], extras: &[u64]) -> Result<Vec<RowSel>> {
        // Batches of parameters: the device selects (or checks) one batch while the scorer
        // runs over the next, instead of idling through every scorer call first.
        let mut rows = Vec::with_capacity(params.len());
        let mut checks = Vec::with_capacity(params.len());
        for ((batch, batch_ks), batch_extras) in params
            .chunks(ROW_BATCH)
            .zip(ks.chunks(ROW_BATCH))
            .zip(extras.chunks(ROW_BATCH))
        {
            let batch_scores: Vec<Scores> = self.score_batch(batch)?;
            let started = engine::step_timing().then(std::time::Instant::now);
            let (r, c) = engine::select_rows(&batch_scores, batch_ks, batch_extras).map_err(
                |(i, e)| match i {
                    Some(i) => self.name_non_finite(batch[i], e),
                    None => e,
                },
            )?;
            if let Some(t) = started {
                self.host_time[2] += t.elapsed();
            }
            rows.extend(r);
            checks.extend(c);
        }
        for (&p, check) in params.iter().zip(checks) {
            self.defer_check(p, "score", check)?;
        }
        Ok(rows)
    }

    fn share_rows(rows: &RowSel) -> RowSel {
        rows.shallow_clone()
    }

    fn plan_rule(&mut self, p: u32, rule: Rule, pruned: u64, what: String) -> Result<Planned> {
        let scores = self.score(p, ScoreRequest::ELEMENTS)?;
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
            Scores::Magnitude { .. } => Ok(Planned::Lazy {
                scores,
                rule,
                pruned,
                what,
            }),
            Scores::Dense(_) => {
                let (bits, pruned) =
                    engine::build_mask(&scores, &rule).map_err(|e| self.name_non_finite(p, e))?;
                Ok(Planned::Mask { bits, pruned, what })
            }
        }
    }

    fn plan_mask(&mut self, p: u32, mask: TensorId) -> Result<Planned> {
        let keep = tensors::get(mask)?;
        let pp = &self.params[p as usize];
        let w = &pp.weight;
        if keep.size() != w.size() {
            birdbone_host::bail!(
                "mask for '{}' has shape {:?}; the weight is {:?}",
                pp.name,
                keep.size(),
                w.size()
            );
        }
        self.check_weight_finite(p)?;
        let bits = engine::pack_keep(&keep.f_to_device(w.device())?)?;
        let kept = keep.f_ne(0)?.f_sum(Kind::Int64)?.int64_value(&[]) as u64;
        Ok(Planned::Mask {
            bits,
            pruned: Count::Ready(w.numel() as u64 - kept),
            what: "explicit mask".into(),
        })
    }

    fn plan_keep(&mut self, _p: u32) -> Planned {
        Planned::Keep
    }

    fn lend_weight(&mut self, p: u32) -> Result<api::Tensor> {
        let params = self.params;
        self.lent.lend(&params[p as usize].weight)
    }

    fn lend_hessian(&mut self, p: u32) -> Result<Hessian> {
        let params = self.params;
        let pp = &params[p as usize];
        let Some((matrix, tokens, group)) = &pp.hessian else {
            birdbone_host::bail!(
                "there are no Hessian statistics for '{}': the component must declare InputSet::HESSIAN so calibration collects them",
                pp.name
            );
        };
        Ok(Hessian {
            matrix: self.lent.lend(matrix)?,
            tokens: *tokens,
            group: *group,
        })
    }

    fn load(&mut self, p: u32) -> Result<Vec<LoadPoint>> {
        let pp = &self.params[p as usize];
        let Some(points) = &pp.load else {
            birdbone_host::bail!(
                "no load was measured for '{}': the allocator must declare InputSet::LOAD",
                pp.name
            );
        };
        Ok(points
            .iter()
            .map(|&(sparsity, loss)| LoadPoint { sparsity, loss })
            .collect())
    }

    fn plan_values(&mut self, p: u32, values: TensorId, keep: TensorId) -> Result<Planned> {
        let (v, k) = (tensors::get(values)?, tensors::get(keep)?);
        let pp = &self.params[p as usize];
        let w = &pp.weight;
        for (t, what) in [(&v, "values"), (&k, "keep mask")] {
            if t.size() != w.size() {
                birdbone_host::bail!(
                    "proposed {what} for '{}' have shape {:?}; the weight is {:?}",
                    pp.name,
                    t.size(),
                    w.size()
                );
            }
        }
        if !v.is_floating_point() {
            birdbone_host::bail!(
                "proposed values for '{}' are {:?}; they must be floating point",
                pp.name,
                v.kind()
            );
        }
        if !matches!(k.kind(), Kind::Bool | Kind::Uint8) {
            birdbone_host::bail!(
                "the keep mask for '{}' is {:?}; it must be u8 or bool",
                pp.name,
                k.kind()
            );
        }
        self.check_weight_finite(p)?;
        let keep = k.f_to_device(w.device())?.f_ne(0)?;
        // A new tensor in every case (masked_fill is out of place), so nothing the plugin still
        // owns is written at commit.
        let values = v
            .f_to_device(w.device())?
            .f_to_kind(w.kind())?
            .f_masked_fill(&keep.f_logical_not()?, 0.0)?
            .f_contiguous()?;
        let check = engine::find_non_finite(&[&values])?
            .pop()
            .expect("one check per tensor");
        self.defer_check(p, "proposed value", check)?;
        let kept = keep.f_sum(Kind::Int64)?.int64_value(&[]) as u64;
        Ok(Planned::Values {
            bits: engine::pack_keep(&keep)?,
            values,
            pruned: Count::Ready(w.numel() as u64 - kept),
            what: "new values".into(),
        })
    }
}
