//! Growth plates over layers (the second design). Every parameter rises along the schedule to
//! its own final sparsity, the allocation's (the `birdbone` allocator keeps load-bearing layers
//! denser) or the schedule's when there is none. The least load-bearing parameters (the most
//! pruned in the end) reach it first, at `earliest` of the schedule; the most load-bearing at its
//! end; the others in between, by their final sparsity. A parameter that has reached its final
//! sparsity ossifies: later passes leave its mask alone, so its remaining weights adapt to it for
//! the rest of training while the bones still growing are pruned around them.

use std::collections::{BTreeMap, BTreeSet};

use birdbone_host::{
    schedule::{Curve, LayerPlateConfig},
    AllocatedParam, Allocation,
};

use crate::error::Result;

/// One parameter's plate.
struct Plate {
    numel: u64,
    /// Weights pruned once it has ossified.
    final_prune: u64,
    /// The share of the schedule at which it reaches `final_prune`.
    end: f64,
}

/// The layer-plate tracker of a training callback.
pub struct LayerPlates {
    cfg: LayerPlateConfig,
    plates: BTreeMap<String, Plate>,
    ossified: BTreeSet<String>,
}

impl LayerPlates {
    /// Plates for `params` (`(name, numel)`, the callback's selection), ending at
    /// `final_sparsity` exactly: per parameter the counts of `allocation` when given (it must
    /// cover exactly these parameters), else `round(s · N)` spread as evenly as exact counts
    /// allow.
    pub fn new(
        cfg: LayerPlateConfig,
        params: &[(String, u64)],
        final_sparsity: f64,
        allocation: Option<&Allocation>,
    ) -> Result<LayerPlates> {
        if !(0.0..=1.0).contains(&cfg.earliest) {
            birdbone_host::bail!("layer plates: earliest {} is not in [0, 1]", cfg.earliest);
        }
        let uniform;
        let allocation = match allocation {
            Some(a) => {
                a.check_fits(params)?;
                if (a.sparsity - final_sparsity).abs() > 1e-9 {
                    birdbone_host::bail!(
                        "layer plates: the allocation is for sparsity {} but the schedule ends at {final_sparsity}",
                        a.sparsity
                    );
                }
                a
            }
            None => {
                let asked = vec![final_sparsity; params.len()];
                uniform =
                    Allocation::exact("uniform", &BTreeMap::new(), final_sparsity, params, &asked)?;
                &uniform
            }
        };
        let (lo, hi) = allocation.sparsity_range();
        let plates = allocation
            .params
            .iter()
            .map(|p| {
                // The most pruned in the end (the least load-bearing) ends first.
                let end = if hi - lo < 1e-9 {
                    1.0
                } else {
                    cfg.earliest + (1.0 - cfg.earliest) * (hi - p.sparsity()) / (hi - lo)
                };
                let plate = Plate {
                    numel: p.numel,
                    final_prune: p.prune,
                    end,
                };
                (p.name.clone(), plate)
            })
            .collect();
        Ok(LayerPlates {
            cfg,
            plates,
            ossified: BTreeSet::new(),
        })
    }

    /// The counts of a pass at `progress` (0 to 1) along a schedule from `initial` sparsity on
    /// `curve`, for the parameters not yet ossified, and the names that ossify with it (those
    /// reaching their final count). The counts never go down from one pass to the next.
    pub fn pass_allocation(
        &self,
        progress: f64,
        initial: f64,
        curve: Curve,
    ) -> Result<(Allocation, Vec<String>)> {
        let mut params = Vec::new();
        let mut ossify = Vec::new();
        for (name, p) in &self.plates {
            if self.ossified.contains(name) {
                continue;
            }
            let q = if p.end <= 0.0 {
                1.0
            } else {
                (progress / p.end).min(1.0)
            };
            let target = p.final_prune as f64 / p.numel.max(1) as f64;
            let (asked, prune) = if q >= 1.0 - 1e-12 {
                ossify.push(name.clone());
                (target, p.final_prune)
            } else {
                let s = (initial + (target - initial) * curve.share(q)).max(0.0);
                let n = ((s * p.numel as f64).round() as u64).min(p.final_prune);
                (s, n)
            };
            params.push(AllocatedParam {
                name: name.clone(),
                numel: p.numel,
                prune,
                asked,
            });
        }
        let total: u64 = params.iter().map(|p| p.numel).sum();
        let pruned: u64 = params.iter().map(|p| p.prune).sum();
        let allocation = Allocation {
            allocator: "layer-plates".into(),
            settings: [("earliest".to_string(), self.cfg.earliest.to_string())].into(),
            sparsity: pruned as f64 / total.max(1) as f64,
            total,
            pruned,
            params,
        };
        Ok((allocation, ossify))
    }

    /// Marks `names` ossified: later passes leave their masks alone.
    pub fn ossify(&mut self, names: impl IntoIterator<Item = String>) {
        self.ossified.extend(names);
    }

    /// Whether `name` has ossified.
    pub fn is_ossified(&self, name: &str) -> bool {
        self.ossified.contains(name)
    }

    /// Parameters ossified so far.
    pub fn ossified(&self) -> &BTreeSet<String> {
        &self.ossified
    }

    /// The share of the schedule at which each parameter reaches its final sparsity.
    pub fn ends(&self) -> BTreeMap<String, f64> {
        self.plates
            .iter()
            .map(|(n, p)| (n.clone(), p.end))
            .collect()
    }

    /// Weights pruned and weights in all, over the ossified parameters.
    pub fn ossified_counts(&self) -> (u64, u64) {
        self.ossified
            .iter()
            .filter_map(|n| self.plates.get(n))
            .fold((0, 0), |(a, b), p| (a + p.final_prune, b + p.numel))
    }
}
