//! The project's own allocator: measure where the load is, then spend the budget where it
//! costs least.
//!
//! The host measures each decoder layer's load ([`InputSet::LOAD`]): the calibration loss with
//! that layer alone pruned by the pass's own scorer and strategy, at the target sparsity `s₁`
//! and a little above it, `s₂`. Each layer's damage is modelled as growing exponentially with
//! its sparsity through those two points, `ΔL(s) = ΔL(s₁) · e^{κ (s - s₁)}` (pruning damage
//! rises faster than linearly, and the rate is the layer's own), and the damages are taken to
//! add up. The sparsities minimise the total under the budget `Σ n·s = s₁ · N`: every layer
//! prunes up to a common marginal damage per weight, `ΔL'(s) = μ · n`, a Lagrange multiplier
//! found by bisection, each layer within `max_shift` of the target. Load-bearing layers (a
//! large or steep damage) stay dense; idle ones go hollow. Every matrix of a layer gets the
//! layer's sparsity.

use birdbone_host_api::sdk::prelude::*;

use crate::{layers, not_a_strategy};

pub struct Birdbone {
    max_shift: f64,
}

/// One layer's damage model.
struct Layer {
    /// Weights of the layer's parameters.
    n: f64,
    /// `ΔL(s₁)`, positive.
    d1: f64,
    /// Growth rate κ.
    kappa: f64,
}

impl Birdbone {
    pub fn new(config: &Config, _host: Host) -> Result<Birdbone> {
        let max_shift = config.f64("max_shift")?;
        if !(0.0..=1.0).contains(&max_shift) {
            return Err(PluginError::invalid(format!(
                "max_shift must be between 0 and 1, got {max_shift}"
            )));
        }
        Ok(Birdbone { max_shift })
    }

    fn layer(&self, plan: &mut Plan<'_>, members: &[usize], target: f64) -> Result<Layer> {
        let first = plan.params()[members[0]].clone();
        let points = plan.load(first.index)?;
        let dense = points
            .iter()
            .find(|p| p.sparsity == 0.0)
            .map(|p| p.loss)
            .ok_or_else(|| {
                PluginError::invalid(format!("the load of '{}' has no dense point", first.name))
            })?;
        let mut above: Vec<LoadPoint> = points
            .iter()
            .copied()
            .filter(|p| p.sparsity > 0.0 && p.loss.is_finite())
            .collect();
        above.sort_by(|a, b| a.sparsity.total_cmp(&b.sparsity));
        let (Some(p1), Some(p2)) = (
            above.iter().find(|p| (p.sparsity - target).abs() < 1e-9),
            above.iter().rev().find(|p| p.sparsity > target + 1e-9),
        ) else {
            return Err(PluginError::invalid(format!(
                "the load of '{}' was measured at {:?}; birdbone needs the target {target} and one sparsity above it",
                first.name,
                points.iter().map(|p| p.sparsity).collect::<Vec<_>>()
            )));
        };
        // A layer whose loss did not rise (noise on little text) still costs a little.
        let floor = 1e-6 * dense.abs().max(1.0);
        let d1 = (p1.loss - dense).max(floor);
        let d2 = (p2.loss - dense).max(d1 * (1.0 + 1e-6));
        let kappa = ((d2 / d1).ln() / (p2.sparsity - p1.sparsity)).max(1e-3);
        let n = members.iter().map(|&i| plan.params()[i].numel as f64).sum();
        Ok(Layer { n, d1, kappa })
    }
}

/// Each layer's sparsity at multiplier `ln_mu` (the log of μ): where its marginal damage is
/// `μ · n`, within the bounds.
fn at(layers: &[Layer], ln_mu: f64, target: f64, lo: f64, hi: f64) -> Vec<f64> {
    layers
        .iter()
        .map(|l| {
            let s = target + (ln_mu + l.n.ln() - (l.d1 * l.kappa).ln()) / l.kappa;
            s.clamp(lo, hi)
        })
        .collect()
}

/// The sparsities that minimise the modelled total damage with `Σ n·s = target · N`.
fn solve(layers: &[Layer], target: f64, max_shift: f64) -> Vec<f64> {
    let (lo, hi) = ((target - max_shift).max(0.0), (target + max_shift).min(1.0));
    let total: f64 = layers.iter().map(|l| l.n).sum();
    let mass = |ln_mu: f64| -> f64 {
        at(layers, ln_mu, target, lo, hi)
            .iter()
            .zip(layers)
            .map(|(s, l)| s * l.n)
            .sum::<f64>()
            / total
    };
    // mass rises with μ, from every layer at `lo` to every layer at `hi`.
    let (mut a, mut b) = (-200.0f64, 200.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (a + b);
        if mass(mid) < target {
            a = mid;
        } else {
            b = mid;
        }
    }
    at(layers, 0.5 * (a + b), target, lo, hi)
}

impl StrategyImpl for Birdbone {
    fn select(&mut self, _plan: &mut Plan<'_>, _target: &Target) -> Result<()> {
        Err(not_a_strategy("birdbone"))
    }

    fn allocate(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<Vec<f64>> {
        let groups = layers::groups(plan.params());
        let mut model = Vec::with_capacity(groups.len());
        for g in &groups {
            model.push(self.layer(plan, g, target.sparsity)?);
        }
        let sparsities = solve(&model, target.sparsity, self.max_shift);
        let mut out = vec![target.sparsity; plan.params().len()];
        for (g, s) in groups.iter().zip(sparsities) {
            for &i in g {
                out[i] = s;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_bearing_layers_stay_dense_and_the_budget_holds() {
        let layers = [
            Layer {
                n: 100.0,
                d1: 1.0,
                kappa: 10.0,
            },
            Layer {
                n: 100.0,
                d1: 0.01,
                kappa: 10.0,
            },
            Layer {
                n: 200.0,
                d1: 0.1,
                kappa: 10.0,
            },
        ];
        let s = solve(&layers, 0.5, 0.2);
        assert!(s[0] < s[2] && s[2] < s[1], "{s:?}");
        let mean = (s[0] * 100.0 + s[1] * 100.0 + s[2] * 200.0) / 400.0;
        assert!((mean - 0.5).abs() < 1e-9, "{mean}");
        assert!(s.iter().all(|x| (x - 0.5).abs() <= 0.2 + 1e-12));
        // Equal layers share the budget evenly.
        let same = [
            Layer {
                n: 10.0,
                d1: 0.5,
                kappa: 5.0,
            },
            Layer {
                n: 10.0,
                d1: 0.5,
                kappa: 5.0,
            },
        ];
        let s = solve(&same, 0.7, 0.1);
        assert!(
            (s[0] - 0.7).abs() < 1e-9 && (s[1] - 0.7).abs() < 1e-9,
            "{s:?}"
        );
    }
}
