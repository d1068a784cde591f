//! OWL, outlier-weighted layer-wise sparsity (Yin et al., 2023, "Outlier Weighed Layerwise
//! Sparsity (OWL)"), as the authors' `prune_wanda_outlier` computes it: for each layer, the
//! share of its scores (all its matrices together) above `M` times the layer's mean score;
//! those ratios min-max scaled to `[0, 2λ]`, centred on the target density, so a layer with
//! more outliers keeps more. Every matrix of a layer gets the layer's sparsity. The scores are
//! the pass's scorer's: with `wanda` (as published), `|W| · ‖X‖` from calibration statistics.

use birdbone_host_api::sdk::prelude::*;

use crate::{layers, not_a_strategy};

pub struct Owl {
    host: Host,
    m: f64,
    lambda: f64,
}

impl Owl {
    pub fn new(config: &Config, host: Host) -> Result<Owl> {
        let m = config.f64("M")?;
        let lambda = config.f64("lambda")?;
        if !(m > 0.0 && m.is_finite()) {
            return Err(PluginError::invalid(format!("M must be positive, got {m}")));
        }
        if !(0.0..=0.5).contains(&lambda) {
            return Err(PluginError::invalid(format!(
                "lambda must be between 0 and 0.5, got {lambda}"
            )));
        }
        Ok(Owl { host, m, lambda })
    }

    /// The layer's outlier ratio, in percent.
    fn outlier_ratio(&self, plan: &mut Plan<'_>, members: &[usize]) -> Result<f64> {
        let h = self.host;
        let mut scores = Vec::with_capacity(members.len());
        let (mut sum, mut n) = (0.0, 0u64);
        for &i in members {
            let info = plan.params()[i].clone();
            let s = plan.scores(info.index, ScoreRequest::ELEMENTS)?;
            sum += h.to_vec(&h.reduce(ReduceOp::Sum, &s, None, false)?)?[0];
            n += info.numel;
            scores.push(s);
        }
        if n == 0 {
            return Ok(0.0);
        }
        let threshold = sum / n as f64 * self.m;
        let mut count = 0.0;
        for s in &scores {
            let above = h.cast(&h.scalar(BinaryOp::Gt, s, threshold)?, DType::F32)?;
            count += h.to_vec(&h.reduce(ReduceOp::Sum, &above, None, false)?)?[0];
        }
        Ok(count / n as f64 * 100.0)
    }
}

impl StrategyImpl for Owl {
    fn select(&mut self, _plan: &mut Plan<'_>, _target: &Target) -> Result<()> {
        Err(not_a_strategy("owl"))
    }

    fn allocate(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<Vec<f64>> {
        let groups = layers::groups(plan.params());
        let mut ratios = Vec::with_capacity(groups.len());
        for g in &groups {
            ratios.push(self.outlier_ratio(plan, g)?);
        }
        let sparsities = owl_sparsities(&ratios, target.sparsity, self.lambda);
        let mut out = vec![target.sparsity; plan.params().len()];
        for (g, s) in groups.iter().zip(sparsities) {
            for &i in g {
                out[i] = s;
            }
        }
        Ok(out)
    }
}

/// The published formula: ratios min-max scaled to `[0, 2λ]`, centred on the target density
/// `1 - s`; a layer's sparsity is one minus its density. Equal ratios give the target.
pub fn owl_sparsities(ratios: &[f64], sparsity: f64, lambda: f64) -> Vec<f64> {
    let (lo, hi) = ratios
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &r| {
            (a.min(r), b.max(r))
        });
    if ratios.is_empty() || hi - lo <= 0.0 {
        return vec![sparsity; ratios.len()];
    }
    let scaled: Vec<f64> = ratios
        .iter()
        .map(|r| (r - lo) * (1.0 / (hi - lo) * lambda * 2.0))
        .collect();
    let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
    scaled
        .iter()
        .map(|x| 1.0 - (x - mean + (1.0 - sparsity)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_outliers_prune_less_within_lambda_around_the_target() {
        let s = owl_sparsities(&[1.0, 2.0, 3.0], 0.7, 0.08);
        assert!((s[0] - 0.78).abs() < 1e-12 && (s[1] - 0.7).abs() < 1e-12);
        assert!((s[2] - 0.62).abs() < 1e-12);
        assert_eq!(owl_sparsities(&[2.0, 2.0], 0.5, 0.08), vec![0.5, 0.5]);
    }
}
