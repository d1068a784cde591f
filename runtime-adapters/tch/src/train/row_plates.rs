//! Growth plates over rows (the first design): rows whose weights and gradients are still
//! changing fast are protected from a pass until they settle, then ossify.

use std::collections::BTreeMap;

use birdbone_host::schedule::GrowthPlateConfig;
use tch::{Kind, Tensor};

use crate::error::Result;

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
