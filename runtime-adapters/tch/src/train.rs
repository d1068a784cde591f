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
//! plugins. Growth plates (the bird-bone idea) protect rows that are still changing fast; their
//! share of the budget is taken elsewhere, so the target is still met exactly. Optional RigL-style
//! regrowth swaps the weakest live weights for the pruned ones with the largest gradients.

use std::collections::BTreeMap;

pub use birdbone_host::schedule::{
    CompressionConfig, Curve, GrowthPlateConfig, RegrowConfig, Schedule,
};
use birdbone_host::{PassConfig, PassReport};
use serde::Serialize;
use tch::{Kind, Tensor};

use crate::{
    error::Result,
    mask::{MaskSet, ParamMask},
    params::{selected, ParamSource},
    prune::{PassInputs, Pruner},
    undo::Journal,
};

/// Per row of one parameter: moving averages of relative weight change and of gradient norm.
struct RowTrack {
    /// `W · P` for a fixed random `P` (`[cols, SKETCH]`): the change of a row's sketch estimates
    /// the norm of the row's change (Johnson–Lindenstrauss) without a copy of the weights.
    proj: Tensor,
    sketch: Tensor,
    change: Tensor,
    grad: Tensor,
    grew: Tensor,
    ossified: Tensor,
}

/// The growth-plate tracker.
pub struct GrowthPlates {
    cfg: GrowthPlateConfig,
    rows: BTreeMap<String, RowTrack>,
    steps: u64,
}

/// Columns of the random projection behind the row sketches.
const SKETCH: i64 = 16;

/// A `[cols, SKETCH]` Gaussian projection scaled so that `E‖xP‖² = ‖x‖²`, from a fixed seed
/// (so that the user's random stream is left alone and runs repeat).
fn projection(cols: i64, device: tch::Device) -> Result<Tensor> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ cols as u64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let scale = 1.0 / (SKETCH as f64).sqrt();
    let values: Vec<f32> = (0..cols * SKETCH)
        .map(|_| {
            // Box–Muller.
            let (u, v) = (uniform(), uniform());
            ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * scale) as f32
        })
        .collect();
    Ok(Tensor::from_slice(&values)
        .f_view([cols, SKETCH])?
        .f_to_device(device)?)
}

/// ‖t_r‖₂ per row, in f32 (one kernel: these run for every parameter at every step).
fn row_norms(t: &Tensor) -> Result<Tensor> {
    Ok(t.f_norm_scalaropt_dim_dtype(2.0, [1i64], false, Kind::Float)?)
}

impl GrowthPlates {
    /// A tracker with `cfg`.
    pub fn new(cfg: GrowthPlateConfig) -> GrowthPlates {
        GrowthPlates {
            cfg,
            rows: BTreeMap::new(),
            steps: 0,
        }
    }

    fn track(&mut self, name: &str, w: &Tensor) -> Result<&mut RowTrack> {
        if !self.rows.contains_key(name) {
            let proj = projection(w.size()[1], w.device())?;
            let sketch = w.f_to_kind(Kind::Float)?.f_matmul(&proj)?;
            let z = Tensor::f_zeros([w.size()[0]], (Kind::Float, w.device()))?;
            let no = z.f_to_kind(Kind::Bool)?;
            self.rows.insert(
                name.to_string(),
                RowTrack {
                    // Separate storage each: the averages are updated in place.
                    grew: no.copy(),
                    ossified: no,
                    change: z.copy(),
                    grad: z,
                    proj,
                    sketch,
                },
            );
        }
        Ok(self.rows.get_mut(name).expect("inserted"))
    }

    /// Rows that grew and have settled, over all tracked parameters.
    pub fn ossified_rows(&self) -> Result<u64> {
        let mut n = 0;
        for t in self.rows.values() {
            n += t.ossified.f_sum(Kind::Int64)?.int64_value(&[]) as u64;
        }
        Ok(n)
    }

    /// After backward: the moving average of each row's gradient norm.
    pub fn observe_gradients(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        let r = self.cfg.rate;
        for (name, w) in params {
            let g = w.grad();
            if !g.defined() || w.dim() != 2 {
                continue;
            }
            let gn = row_norms(&g)?;
            let t = self.track(name, w)?;
            let _ = t.grad.f_lerp_(&gn, r)?;
        }
        Ok(())
    }

    /// After the optimizer step: the moving average of each row's relative change.
    pub fn observe_step(&mut self, params: &[(String, Tensor)]) -> Result<()> {
        let r = self.cfg.rate;
        self.steps += 1;
        for (name, w) in params {
            if w.dim() != 2 {
                continue;
            }
            let t = self.track(name, w)?;
            let sketch = w.f_to_kind(Kind::Float)?.f_matmul(&t.proj)?;
            // ‖ΔW_r‖, estimated from the sketch. Not divided by ‖W_r‖: under Adam every weight
            // moves about lr a step whatever its size, so a row's change measures how steadily
            // its gradient pushes it (`protected` compares it with the parameter's median row),
            // while dividing by the norm would only single out rows of small norm.
            let rel = row_norms(&sketch.f_sub(&t.sketch)?)?;
            let _ = t.change.f_lerp_(&rel, r)?;
            t.sketch = sketch;
        }
        Ok(())
    }

    /// Rows protected now, per parameter (bool `[rows]`). A row grows while its growth, the mean
    /// of its change and gradient averages each relative to the parameter's median row, is above
    /// `factor`; of the growing rows at most `max_protected` of the parameter, the fastest, are
    /// protected; a row that has grown and then settled back to the median is ossified and never
    /// protected again.
    pub fn protected(&mut self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = BTreeMap::new();
        if self.steps < self.cfg.warmup_steps {
            return Ok(out);
        }
        let (factor, max_frac) = (self.cfg.factor, self.cfg.max_protected);
        for (name, t) in self.rows.iter_mut() {
            let rel =
                |x: &Tensor| -> Result<Tensor> { Ok(x.f_div(&x.f_median()?.f_clamp_min(1e-20)?)?) };
            let growth = rel(&t.change)?.f_add(&rel(&t.grad)?)?.f_mul_scalar(0.5)?;
            let growing = growth
                .f_gt(factor)?
                .f_logical_and(&t.ossified.f_logical_not()?)?;
            let rows = growth.size()[0];
            let cap = ((max_frac * rows as f64).floor() as i64).max(0);
            let mut protect = growing.f_zeros_like()?;
            let n_growing = growing.f_sum(Kind::Int64)?.int64_value(&[]);
            if n_growing > 0 && cap > 0 {
                let ranked = growth.f_where_self(&growing, &Tensor::from(f32::NEG_INFINITY))?;
                let (_, idx) = ranked.f_sort(0, true)?;
                let top = idx.f_narrow(0, 0, n_growing.min(cap))?;
                protect = protect.f_index_fill(0, &top, 1)?;
            }
            // Rows that grew and have settled back to the median ossify: hysteresis between the
            // median and `factor` keeps a row from flickering in and out of protection.
            t.grew = t.grew.f_logical_or(&growing)?;
            t.ossified = t
                .ossified
                .f_logical_or(&t.grew.f_logical_and(&growth.f_le(1.0)?)?)?;
            out.insert(name.clone(), protect.f_to_kind(Kind::Bool)?);
        }
        Ok(out)
    }
}

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
        })
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
        self.pass(
            model,
            sparsity,
            PassInputs {
                stats,
                protected_rows: None,
                load: None,
            },
        )
    }

    /// Plans and commits a pass to `sparsity`; its masks replace those in force.
    fn pass(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        sparsity: f64,
        inputs: PassInputs<'_>,
    ) -> Result<PassReport> {
        let config = PassConfig {
            sparsity,
            nm: self.cfg.nm,
            keep_masks: true,
            filter: self.cfg.filter.clone(),
            allocation: None,
        };
        let plan = self.pruner.plan(model, &config, inputs)?;
        let (report, masks, journal) = if self.undo_passes > 0 {
            let (r, m, j) = plan.commit_undoable()?;
            (r, m, Some(j))
        } else {
            let (r, m) = plan.commit()?;
            (r, m, None)
        };
        let before = std::mem::replace(&mut self.masks, masks);
        // Regrowth later swaps as many as it revives: the count stays the pass's.
        let counts = std::mem::replace(&mut self.counts, (report.pruned, report.total));
        if let Some(j) = journal {
            self.undo.push_back((j, before, counts));
            while self.undo.len() > self.undo_passes {
                self.undo.pop_front();
            }
        }
        Ok(report)
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
            let report = self.pass(
                model,
                target,
                PassInputs {
                    stats: None,
                    protected_rows: Some(&protected),
                    load: None,
                },
            )?;
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
            pass = Some(report);
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
