//! Allocation: how many weights each parameter prunes, decided for the whole model before
//! selection.
//!
//! An allocator component (ABI 1.2, [`birdbone_host_api::Strategy::allocate`]) answers with a
//! sparsity per parameter; [`Allocation::exact`] turns that answer into integer counts that sum
//! to exactly `round(s · N)` over every allocated parameter: the answer clamped to `[0, 1]`,
//! shifted by one common amount (found by bisection) so its weighted mean is the target, then
//! rounded by largest remainder, ties to the earlier parameter. Strategies read the counts
//! through [`birdbone_host_api::PlanContext::allocated`]; per-row selections split a
//! parameter's count over its rows (the first rows one more).
//!
//! An allocation is saved beside a pruned model (`allocation.json`) and can be replayed: the
//! same counts for the same parameters, without running the allocator again.

use std::{collections::BTreeMap, path::Path};

use serde::{Deserialize, Serialize};

use crate::{bail, error::Result};

/// One parameter's share.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AllocatedParam {
    /// The parameter's name.
    pub name: String,
    /// Its weights.
    pub numel: u64,
    /// Weights it prunes.
    pub prune: u64,
    /// The sparsity the allocator asked for (before the shift and the rounding).
    pub asked: f64,
}

impl AllocatedParam {
    /// The sparsity it gets, `prune / numel`.
    pub fn sparsity(&self) -> f64 {
        if self.numel == 0 {
            0.0
        } else {
            self.prune as f64 / self.numel as f64
        }
    }
}

/// Exact per-parameter counts for a pass, and where they came from.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Allocation {
    /// The allocator that made it.
    pub allocator: String,
    /// Its settings.
    pub settings: BTreeMap<String, String>,
    /// The model-wide sparsity asked for.
    pub sparsity: f64,
    /// Weights of every allocated parameter together (N).
    pub total: u64,
    /// Weights pruned: exactly `round(sparsity · total)`.
    pub pruned: u64,
    /// Each parameter, in the order the allocator saw them.
    pub params: Vec<AllocatedParam>,
}

/// `round(s · n)`, halves away from zero, as every count in Birdbone is.
fn round_count(s: f64, n: u64) -> u64 {
    ((s * n as f64).round() as u64).min(n)
}

impl Allocation {
    /// Exact counts from an allocator's answer `asked` (one sparsity per parameter of
    /// `params`, `(name, numel)`), for the model-wide `sparsity`.
    pub fn exact(
        allocator: &str,
        settings: &BTreeMap<String, String>,
        sparsity: f64,
        params: &[(String, u64)],
        asked: &[f64],
    ) -> Result<Allocation> {
        if !(0.0..=1.0).contains(&sparsity) {
            bail!("sparsity must be between 0 and 1, got {sparsity}");
        }
        if asked.len() != params.len() {
            bail!(
                "allocator '{allocator}' answered {} sparsities for {} parameters",
                asked.len(),
                params.len()
            );
        }
        if let Some(i) = asked.iter().position(|a| !a.is_finite()) {
            bail!(
                "allocator '{allocator}' asked for sparsity {} in '{}'",
                asked[i],
                params[i].0
            );
        }
        let total: u64 = params.iter().map(|p| p.1).sum();
        let pruned = round_count(sparsity, total);
        let counts = exact_counts(params, asked, pruned);
        Ok(Allocation {
            allocator: allocator.to_string(),
            settings: settings.clone(),
            sparsity,
            total,
            pruned,
            params: params
                .iter()
                .zip(asked)
                .zip(counts)
                .map(|(((name, numel), &asked), prune)| AllocatedParam {
                    name: name.clone(),
                    numel: *numel,
                    prune,
                    asked,
                })
                .collect(),
        })
    }

    /// The count of `name`, if it was allocated.
    pub fn count(&self, name: &str) -> Option<u64> {
        self.params.iter().find(|p| p.name == name).map(|p| p.prune)
    }

    /// Checks the allocation holds together (after reading one from a file): counts within
    /// their parameters, summing to `pruned`, names unique.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::BTreeSet::new();
        for p in &self.params {
            if p.prune > p.numel {
                bail!(
                    "allocation: '{}' prunes {} of {} weights",
                    p.name,
                    p.prune,
                    p.numel
                );
            }
            if !seen.insert(p.name.as_str()) {
                bail!("allocation: '{}' appears twice", p.name);
            }
        }
        let sum: u64 = self.params.iter().map(|p| p.prune).sum();
        let total: u64 = self.params.iter().map(|p| p.numel).sum();
        if sum != self.pruned || total != self.total {
            bail!(
                "allocation: the parameters prune {sum} of {total} weights, the header says {} of {}",
                self.pruned,
                self.total
            );
        }
        Ok(())
    }

    /// Checks a replayed allocation fits the parameters of this model: every one of `params`
    /// allocated, with the same size.
    pub fn check_fits(&self, params: &[(String, u64)]) -> Result<()> {
        for (name, numel) in params {
            match self.params.iter().find(|p| &p.name == name) {
                None => bail!("the allocation has no count for '{name}': it was made for another model or another filter"),
                Some(p) if p.numel != *numel => bail!(
                    "the allocation's '{name}' has {} weights, this model's {numel}: it was made for another model",
                    p.numel
                ),
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The lowest and the highest sparsity any parameter gets (`(0, 0)` with none).
    pub fn sparsity_range(&self) -> (f64, f64) {
        let mut it = self.params.iter().map(AllocatedParam::sparsity);
        let first = it.next().unwrap_or(0.0);
        it.fold((first, first), |(l, h), s| (l.min(s), h.max(s)))
    }

    /// Writes it as JSON, atomically (a temporary file renamed over `path`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| crate::Error::Invalid(format!("allocation: {e}")))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n")
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| crate::Error::Invalid(format!("writing {}: {e}", path.display())))
    }

    /// Reads one saved by [`Allocation::save`] and validates it.
    pub fn load(path: &Path) -> Result<Allocation> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| crate::Error::Invalid(format!("reading {}: {e}", path.display())))?;
        let a: Allocation = serde_json::from_str(&text).map_err(|e| {
            crate::Error::Invalid(format!("{} is not an allocation: {e}", path.display()))
        })?;
        a.validate()?;
        Ok(a)
    }
}

/// Integer counts summing to exactly `target`: `asked` clamped to `[0, 1]` and shifted by one
/// common amount so `Σ n·s = target`, then floors plus one each to the largest remainders
/// (ties: the earlier parameter).
fn exact_counts(params: &[(String, u64)], asked: &[f64], target: u64) -> Vec<u64> {
    let mass = |shift: f64| -> f64 {
        params
            .iter()
            .zip(asked)
            .map(|((_, n), a)| *n as f64 * (a + shift).clamp(0.0, 1.0))
            .sum()
    };
    let goal = target as f64;
    let shift = if (mass(0.0) - goal).abs() < 0.5 {
        0.0
    } else {
        // mass() rises with the shift from 0 (everything dense) to N (everything pruned).
        let (mut lo, mut hi) = (-1.0f64, 1.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mass(mid) < goal {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        0.5 * (lo + hi)
    };
    let shares: Vec<f64> = params
        .iter()
        .zip(asked)
        .map(|((_, n), a)| *n as f64 * (a + shift).clamp(0.0, 1.0))
        .collect();
    let mut counts: Vec<u64> = params
        .iter()
        .zip(&shares)
        .map(|((_, n), x)| (x.floor() as u64).min(*n))
        .collect();
    let rem = |i: usize| shares[i] - shares[i].floor();
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by(|&a, &b| rem(b).total_cmp(&rem(a)).then(a.cmp(&b)));
    let mut sum: u64 = counts.iter().sum();
    // Usually one pass over the largest remainders; the loops only matter when float error
    // left the floors a little off the goal.
    while sum < target {
        let before = sum;
        for &i in &order {
            if sum == target {
                break;
            }
            if counts[i] < params[i].1 {
                counts[i] += 1;
                sum += 1;
            }
        }
        if sum == before {
            break;
        }
    }
    while sum > target {
        let before = sum;
        for &i in order.iter().rev() {
            if sum == target {
                break;
            }
            if counts[i] > 0 {
                counts[i] -= 1;
                sum -= 1;
            }
        }
        if sum == before {
            break;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(sizes: &[u64]) -> Vec<(String, u64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| (format!("p{i}"), n))
            .collect()
    }

    #[test]
    fn counts_sum_to_the_exact_target_whatever_the_answer() {
        let ps = params(&[576 * 576, 576 * 192, 1536 * 576, 7, 1]);
        for &s in &[0.0, 0.3, 0.5, 0.6, 0.7, 0.999, 1.0] {
            for asked in [
                vec![s; 5],
                vec![0.9, 0.1, 0.5, 1.5, -2.0],
                vec![0.0; 5],
                vec![1.0; 5],
            ] {
                let a = Allocation::exact("t", &BTreeMap::new(), s, &ps, &asked).unwrap();
                let total: u64 = ps.iter().map(|p| p.1).sum();
                assert_eq!(a.pruned, round_count(s, total));
                assert_eq!(a.params.iter().map(|p| p.prune).sum::<u64>(), a.pruned);
                a.validate().unwrap();
                for p in &a.params {
                    assert!(p.prune <= p.numel);
                }
            }
        }
    }

    #[test]
    fn an_answer_on_target_is_kept_up_to_rounding() {
        let ps = params(&[1000, 1000, 1000]);
        let a = Allocation::exact("t", &BTreeMap::new(), 0.5, &ps, &[0.4, 0.5, 0.6]).unwrap();
        let got: Vec<u64> = a.params.iter().map(|p| p.prune).collect();
        assert_eq!(got, vec![400, 500, 600]);
        // Remainders go to the largest first, ties to the earlier parameter.
        let ps = params(&[3, 3, 3]);
        let a = Allocation::exact("t", &BTreeMap::new(), 0.5, &ps, &[0.5, 0.5, 0.5]).unwrap();
        let got: Vec<u64> = a.params.iter().map(|p| p.prune).collect();
        assert_eq!(got, vec![2, 2, 1]);
    }

    #[test]
    fn bad_answers_and_files_are_refused() {
        let ps = params(&[10, 10]);
        let e = Allocation::exact("owl", &BTreeMap::new(), 0.5, &ps, &[0.5]).unwrap_err();
        assert!(e.to_string().contains("1 sparsities for 2"), "{e}");
        let e = Allocation::exact("owl", &BTreeMap::new(), 0.5, &ps, &[0.5, f64::NAN]).unwrap_err();
        assert!(e.to_string().contains("'p1'"), "{e}");
        let mut a = Allocation::exact("t", &BTreeMap::new(), 0.5, &ps, &[0.5, 0.5]).unwrap();
        a.params[0].prune += 1;
        assert!(a.validate().unwrap_err().to_string().contains("header"));
        let a = Allocation::exact("t", &BTreeMap::new(), 0.5, &ps, &[0.5, 0.5]).unwrap();
        let e = a.check_fits(&params(&[10, 11])).unwrap_err();
        assert!(e.to_string().contains("another model"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allocation.json");
        a.save(&path).unwrap();
        assert_eq!(Allocation::load(&path).unwrap(), a);
        std::fs::write(&path, "{}").unwrap();
        assert!(Allocation::load(&path).is_err());
    }
}
