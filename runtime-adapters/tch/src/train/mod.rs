//! Compression during fine-tuning: a callback for tch training loops.
//!
//! Around the usual step:
//!
//! ```ignore
//! loss.backward();
//! compression.after_backward(&vs)?;   // scorers accumulate; pruned weights get no gradient
//! optimizer.step();
//! let event = compression.after_step(&vs)?; // masks re-applied; passes at schedule points
//! ```
//!
//! Masks are re-applied after every optimizer step, so the sparsity is exact after every step
//! whatever the optimizer's moments hold. At schedule points a pruning pass runs through the
//! plugins, scored with the activation statistics the loop hands over from its own forwards
//! ([`Compression::observe_activations`]) when the scorer reads them (Wanda, RIA).
//!
//! Growth plates, the bird-bone idea, come in two designs. Over layers ([`layer_plates`]): each
//! parameter rises to its own final sparsity (an allocation's, [`Compression::set_allocation`]),
//! the least load-bearing first, and ossifies there. Over rows ([`row_plates`]): rows still
//! changing fast are protected from a pass, their share taken elsewhere. Either way every pass
//! prunes an exact count. Optional RigL-style regrowth swaps the weakest live weights for the
//! pruned ones with the largest gradients.

pub mod layer_plates;
pub mod row_plates;

use std::{collections::BTreeMap, sync::Arc};

pub use birdbone_host::schedule::{
    CompressionConfig, Curve, GrowthPlateConfig, LayerPlateConfig, RegrowConfig, Schedule,
};
use birdbone_host::{Allocation, PassConfig, PassReport};
use serde::Serialize;
use tch::{Kind, Tensor};

pub use self::{layer_plates::LayerPlates, row_plates::GrowthPlates};
use crate::{
    error::Result,
    mask::{MaskSet, ParamMask},
    params::{selected, ParamSource},
    prune::{PassInputs, Pruner},
    stats::ActivationStats,
    undo::Journal,
};

/// What a pass covers: the parameters, the sparsity, the layer plates' counts and the
/// parameters that ossify with it.
type PassScope = (Vec<(String, Tensor)>, f64, Option<Allocation>, Vec<String>);

/// What `after_step` did.
#[derive(Clone, Debug, Serialize)]
pub struct StepEvent {
    /// Steps taken so far.
    pub step: u64,
    /// The pass run after this step, if it was a schedule point.
    pub pass: Option<PassReport>,
    /// Weights regrown (and as many pruned) after the pass.
    pub regrown: u64,
    /// Sparsity of the selected weights now (exact: the masks were just applied).
    pub sparsity: f64,
    /// Rows under growth-plate protection in this step's pass.
    pub protected_rows: u64,
}

/// The training callback.
pub struct Compression {
    pruner: Pruner,
    cfg: CompressionConfig,
    plates: Option<GrowthPlates>,
    masks: MaskSet,
    step: u64,
    /// |∇W| before masking, kept for regrowth in the step that ends at a schedule point (RigL
    /// ranks pruned weights by their dense gradient, which masking would zero).
    dense_grads: BTreeMap<String, Tensor>,
    /// The rows growth plates protected in the last pass.
    last_protected: BTreeMap<String, Tensor>,
    /// Pruned and total weights of `masks` (kept here: counting the bits every step would
    /// read every mask back from the device).
    counts: (u64, u64),
    /// Passes that can be taken back, newest last: what each overwrote, and the masks and
    /// counts in force before it.
    undo: std::collections::VecDeque<(Journal, MaskSet, (u64, u64))>,
    /// How many passes `undo` keeps (0: none).
    undo_passes: usize,
    /// Activation statistics from the forwards since the last pass.
    activations: ActivationStats,
    /// The final allocation the layer plates rise to.
    allocation: Option<Arc<Allocation>>,
    /// Growth plates over layers, made at the first pass.
    layer_plates: Option<LayerPlates>,
}

impl Compression {
    /// A callback running `pruner`'s scorer and strategy on `cfg`'s schedule.
    pub fn new(pruner: Pruner, cfg: CompressionConfig) -> Result<Compression> {
        cfg.schedule.validate()?;
        if let Some(r) = &cfg.regrow {
            if !(0.0..=1.0).contains(&r.fraction) {
                birdbone_host::bail!("regrow fraction {} is not in [0, 1]", r.fraction);
            }
        }
        let plates = cfg.growth_plates.clone().map(GrowthPlates::new);
        Ok(Compression {
            pruner,
            cfg,
            plates,
            masks: MaskSet::new(),
            undo: Default::default(),
            undo_passes: 0,
            step: 0,
            dense_grads: BTreeMap::new(),
            last_protected: BTreeMap::new(),
            counts: (0, 0),
            activations: ActivationStats::new(),
            allocation: None,
            layer_plates: None,
        })
    }

    /// The final per-parameter counts (an allocation made before training, e.g. by the
    /// `birdbone` allocator at the schedule's final sparsity): the layer plates rise to them, and
    /// a pass straight to that sparsity (one-shot, [`Compression::prune_now`]) prunes them. A
    /// gradual schedule without layer plates has no counts for its intermediate passes and
    /// refuses it at the first. Set it before the first pass.
    pub fn set_allocation(&mut self, allocation: Allocation) -> Result<()> {
        if self.layer_plates.is_some() {
            birdbone_host::bail!(
                "the layer plates were made at the first pass: set the allocation before it"
            );
        }
        self.allocation = Some(Arc::new(allocation));
        Ok(())
    }

    /// The allocation of a pass to `sparsity` without layer plates: the one set, when it is for
    /// that sparsity.
    fn direct_allocation(&self, sparsity: f64) -> Result<Option<Allocation>> {
        match &self.allocation {
            None => Ok(None),
            Some(a) if (a.sparsity - sparsity).abs() < 1e-12 => Ok(Some(Allocation::clone(a))),
            Some(a) => birdbone_host::bail!(
                "the allocation is for sparsity {} and this pass prunes to {sparsity}: an allocation is followed through a gradual schedule by layer plates (`layer_plates`)",
                a.sparsity
            ),
        }
    }

    /// Whether the next steps' forwards should record activation statistics for
    /// [`Compression::observe_activations`]: the scorer reads them and a pass is still to come.
    pub fn wants_activations(&self) -> bool {
        let last = match self.cfg.schedule {
            Schedule::OneShot { at_step, .. } => at_step,
            Schedule::Gradual { end_step, .. } => end_step,
        };
        self.pruner.needs_activations() && self.step < last
    }

    /// Adds one forward's activation statistics (per weight name: `Σ x²` per input column and
    /// the tokens summed, as `birdbone_llama::StatsRecorder` records them); the next pass scores
    /// with everything gathered since the previous one.
    pub fn observe_activations<'a>(
        &mut self,
        sums: impl IntoIterator<Item = (&'a String, &'a (Tensor, u64))>,
    ) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (name, (sq, tokens)) in sums {
            self.activations.accumulate(name, sq, *tokens)?;
        }
        Ok(())
    }

    /// The layer plates, once made (at the first pass).
    pub fn layer_plates(&self) -> Option<&LayerPlates> {
        self.layer_plates.as_ref()
    }

    /// The masks in force.
    pub fn masks(&self) -> &MaskSet {
        &self.masks
    }

    /// Steps taken.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The rows growth plates protected in the last pass (bool `[rows]` per parameter; only
    /// parameters with a protected row appear).
    pub fn last_protected(&self) -> &BTreeMap<String, Tensor> {
        &self.last_protected
    }

    /// The growth-plate tracker, when configured.
    pub fn growth_plates(&self) -> Option<&GrowthPlates> {
        self.plates.as_ref()
    }

    fn selected(&self, model: &(impl ParamSource + ?Sized)) -> Result<Vec<(String, Tensor)>> {
        selected(model, &self.cfg.filter)
    }

    /// Keeps the last `passes` passes so [`Compression::undo_last_pass`] can take them back
    /// (each holds, in host memory, what its commit and regrowth overwrote; see
    /// [`crate::undo`]). 0, the default, keeps none.
    pub fn keep_undo(&mut self, passes: usize) {
        self.undo_passes = passes;
        while self.undo.len() > passes {
            self.undo.pop_front();
        }
    }

    /// Takes the newest kept pass back: the weights it (and its regrowth) wrote are restored
    /// bit for bit, and the masks and counts in force before it return. Right after the pass,
    /// the model is exactly as before it. After later optimizer steps, the zeroed values come
    /// back and the other weights keep those steps' updates, except in a parameter the journal
    /// kept whole (see [`crate::undo`]), which returns entirely. `Ok(false)` when no pass is
    /// kept.
    pub fn undo_last_pass(&mut self) -> Result<bool> {
        let Some((journal, _, _)) = self.undo.back() else {
            return Ok(false);
        };
        // Kept until the restore succeeded, so a failed one can be tried again.
        journal.restore()?;
        let (_, masks, counts) = self.undo.pop_back().expect("checked above");
        self.masks = masks;
        self.counts = counts;
        Ok(true)
    }

    /// Passes [`Compression::undo_last_pass`] can take back.
    pub fn undoable_passes(&self) -> usize {
        self.undo.len()
    }

    /// Prunes now, outside the schedule (one-shot pruning before fine-tuning, with calibration
    /// statistics for scorers such as Wanda); the masks then hold through every later step.
    pub fn prune_now(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        sparsity: f64,
        stats: Option<&crate::ActivationStats>,
    ) -> Result<PassReport> {
        let params = self.selected(model)?;
        let allocation = self.direct_allocation(sparsity)?;
        self.pass(
            params,
            sparsity,
            allocation,
            PassInputs {
                stats,
                protected_rows: None,
                load: None,
            },
        )
    }

    /// Plans and commits a pass over `params` to `sparsity` (with `allocation`'s counts when
    /// given); its masks replace those in force, except the ossified parameters', which keep
    /// theirs.
    fn pass(
        &mut self,
        params: Vec<(String, Tensor)>,
        sparsity: f64,
        allocation: Option<Allocation>,
        inputs: PassInputs<'_>,
    ) -> Result<PassReport> {
        let config = PassConfig {
            sparsity,
            nm: self.cfg.nm,
            keep_masks: true,
            filter: self.cfg.filter.clone(),
            allocation: allocation.map(Arc::new),
        };
        let plan = self.pruner.plan_params(params, &config, inputs)?;
        let (report, mut masks, journal) = if self.undo_passes > 0 {
            let (r, m, j) = plan.commit_undoable()?;
            (r, m, Some(j))
        } else {
            let (r, m) = plan.commit()?;
            (r, m, None)
        };
        let (mut pruned, mut total) = (report.pruned, report.total);
        if let Some(plates) = &self.layer_plates {
            for name in plates.ossified() {
                if let Some(m) = self.masks.get(name) {
                    let kept = ParamMask {
                        shape: m.shape.clone(),
                        bits: m.bits.shallow_clone(),
                    };
                    masks.insert(name.clone(), kept);
                }
            }
            let (p, t) = plates.ossified_counts();
            pruned += p;
            total += t;
        }
        let before = std::mem::replace(&mut self.masks, masks);
        // Regrowth later swaps as many as it revives: the count stays the pass's.
        let counts = std::mem::replace(&mut self.counts, (pruned, total));
        if let Some(j) = journal {
            self.undo.push_back((j, before, counts));
            while self.undo.len() > self.undo_passes {
                self.undo.pop_front();
            }
        }
        Ok(report)
    }

    /// What the pass after this step covers: the parameters, the sparsity, the layer plates'
    /// counts and the parameters that ossify with it (none without layer plates).
    fn pass_scope(&mut self, params: &[(String, Tensor)], target: f64) -> Result<PassScope> {
        let all = || params.iter().map(|(n, t)| (n.clone(), t.shallow_clone()));
        let Some(cfg) = self.cfg.layer_plates.clone() else {
            let allocation = self.direct_allocation(target)?;
            return Ok((all().collect(), target, allocation, Vec::new()));
        };
        if self.layer_plates.is_none() {
            let sizes: Vec<(String, u64)> = params
                .iter()
                .map(|(n, t)| (n.clone(), t.numel() as u64))
                .collect();
            let (_, last) = self.cfg.schedule.range();
            let plates = LayerPlates::new(cfg, &sizes, last, self.allocation.as_deref())?;
            self.layer_plates = Some(plates);
        }
        let plates = self.layer_plates.as_ref().expect("made above");
        let progress = self.cfg.schedule.progress_at(self.step).unwrap_or(1.0);
        let (initial, _) = self.cfg.schedule.range();
        let (allocation, ossify) =
            plates.pass_allocation(progress, initial, self.cfg.schedule.curve())?;
        let live = all().filter(|(n, _)| !plates.is_ossified(n)).collect();
        Ok((live, allocation.sparsity, Some(allocation), ossify))
    }

    /// Call after `backward`, before the optimizer step: stateful scorers accumulate, growth
    /// plates note gradient norms, and pruned weights get no gradient (so the optimizer's moments
    /// see nothing there).
    pub fn after_backward(&mut self, model: &(impl ParamSource + ?Sized)) -> Result<()> {
        let params = self.selected(model)?;
        self.pruner.observe(&params)?;
        self.dense_grads.clear();
        if self.cfg.regrow.is_some() && self.cfg.schedule.target_at(self.step + 1).is_some() {
            let _g = tch::no_grad_guard();
            for (name, w) in &params {
                let g = w.grad();
                if g.defined() {
                    self.dense_grads
                        .insert(name.clone(), g.f_abs()?.f_to_kind(Kind::Float)?);
                }
            }
        }
        if let Some(p) = self.plates.as_mut() {
            p.observe_gradients(&params)?;
        }
        if !self.masks.is_empty() {
            self.masks.mask_gradients(model)?;
        }
        Ok(())
    }

    /// Call after the optimizer step: masks re-applied (nothing regrows), growth plates updated,
    /// and at schedule points a pruning pass (then regrowth). A failing pass returns its error and
    /// leaves weights and masks as they were after re-application.
    pub fn after_step(&mut self, model: &(impl ParamSource + ?Sized)) -> Result<StepEvent> {
        self.step += 1;
        if !self.masks.is_empty() {
            self.masks.apply(model)?;
        }
        let params = self.selected(model)?;
        if let Some(p) = self.plates.as_mut() {
            let _g = tch::no_grad_guard();
            p.observe_step(&params)?;
        }
        let mut pass = None;
        let mut regrown = 0;
        let mut protected_rows = 0;
        if let Some(target) = self.cfg.schedule.target_at(self.step) {
            let mut protected = match self.plates.as_mut() {
                Some(p) => {
                    let _g = tch::no_grad_guard();
                    p.protected()?
                }
                None => BTreeMap::new(),
            };
            for rows in protected.values() {
                protected_rows += rows.f_sum(Kind::Int64)?.int64_value(&[]) as u64;
            }
            let (live, sparsity, allocation, ossify) = self.pass_scope(&params, target)?;
            // What the forwards since the last pass recorded, for scorers that read it.
            // A failed pass keeps them for the next attempt.
            let activations = std::mem::take(&mut self.activations);
            let report = if live.is_empty() {
                None
            } else {
                let inputs = PassInputs {
                    stats: (!activations.is_empty()).then_some(&activations),
                    protected_rows: Some(&protected),
                    load: None,
                };
                match self.pass(live, sparsity, allocation, inputs) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.activations = activations;
                        return Err(e);
                    }
                }
            };
            if let Some(plates) = self.layer_plates.as_mut() {
                plates.ossify(ossify);
            }
            if let Some(r) = self.cfg.regrow.clone() {
                regrown = match self.regrow(&params, r.fraction, &protected) {
                    Ok(n) => n,
                    Err(e) => {
                        // With the pass kept for undo, regrowth's partial swaps and the pass
                        // itself go back together.
                        if self.undo_passes > 0 {
                            self.undo_last_pass()?;
                        }
                        return Err(e);
                    }
                };
            }
            self.dense_grads.clear();
            protected.retain(|_, rows| {
                rows.f_any()
                    .map(|a| a.int64_value(&[]) == 1)
                    .unwrap_or(true)
            });
            self.last_protected = protected;
            pass = report;
        }
        let (pruned, total) = self.counts;
        Ok(StepEvent {
            step: self.step,
            pass,
            regrown,
            sparsity: pruned as f64 / total.max(1) as f64,
            protected_rows,
        })
    }

    /// Per parameter: the `fraction` of pruned weights with the largest gradients come back (at
    /// zero), and as many of the weakest live weights, outside protected rows, are pruned. Counts
    /// stay exact; ties go to the lower index (stable sorts).
    fn regrow(
        &mut self,
        params: &[(String, Tensor)],
        fraction: f64,
        protected: &BTreeMap<String, Tensor>,
    ) -> Result<u64> {
        let _g = tch::no_grad_guard();
        let mut total = 0;
        for (name, w) in params {
            let Some(m) = self.masks.get(name) else {
                continue;
            };
            let Some(g) = self.dense_grads.get(name) else {
                continue;
            };
            if self
                .layer_plates
                .as_ref()
                .is_some_and(|p| p.is_ossified(name))
            {
                continue;
            }
            let keep = m.keep()?.f_reshape([-1])?;
            let pruned = keep.f_logical_not()?;
            let n_pruned = pruned.f_sum(Kind::Int64)?.int64_value(&[]);
            let n = (fraction * n_pruned as f64).round() as i64;
            if n == 0 {
                continue;
            }
            let grad = g.f_reshape([-1])?;
            let (_, grow) = grad
                .f_where_self(&pruned, &Tensor::from(-1f32))?
                .f_sort_stable(true, 0, true)?;
            let grow = grow.f_narrow(0, 0, n)?;
            let mut live = keep.shallow_clone();
            if let Some(rows) = protected.get(name) {
                let cols = w.size()[1];
                let cover = rows
                    .f_unsqueeze(1)?
                    .f_expand([w.size()[0], cols], false)?
                    .f_reshape([-1])?;
                live = live.f_logical_and(&cover.f_logical_not()?)?;
            }
            let mag = w.f_abs()?.f_to_kind(Kind::Float)?.f_reshape([-1])?;
            let (_, drop) = mag
                .f_where_self(&live, &Tensor::from(f32::INFINITY))?
                .f_sort_stable(true, 0, false)?;
            let drop = drop.f_narrow(0, 0, n)?;
            // The pass just kept is this regrowth's too: its swaps are taken back with it.
            if let Some((journal, _, _)) = self.undo.back_mut() {
                journal.keep_indexed(w, &drop)?;
            }
            let new_keep = keep.f_index_fill(0, &grow, 1)?.f_index_fill(0, &drop, 0)?;
            let _ = w
                .shallow_clone()
                .f_reshape([-1])?
                .f_index_fill_(0, &drop, 0.0)?;
            let bits = crate::engine::pack_keep(&new_keep)?;
            self.masks.insert(
                name.clone(),
                ParamMask {
                    shape: w.size(),
                    bits,
                },
            );
            total += n as u64;
        }
        Ok(total)
    }
}
