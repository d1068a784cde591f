//! Calibration statistics handed to components: per input channel, the sum of squared inputs
//! (Wanda-like scorers), and per distinct Linear input, `XᵀX` (methods that reconstruct, such as
//! SparseGPT).

use std::collections::BTreeMap;

use tch::Tensor;

/// Per-parameter input statistics: `sq_sums[j] = Σ_tokens x_j²` (f32 `[in_features]`, on the
/// weight's device) and the number of tokens summed.
#[derive(Default)]
pub struct ActivationStats {
    entries: BTreeMap<String, (Tensor, u64)>,
    hessians: BTreeMap<String, HessianStat>,
}

/// `XᵀX` of one Linear's inputs: f32 `[in, in]` on the weight's device, the tokens summed, and a
/// group number shared by the Linears that read the same input (their matrices are one tensor).
pub struct HessianStat {
    /// `Σ x xᵀ`.
    pub matrix: Tensor,
    /// Tokens summed.
    pub tokens: u64,
    /// Equal for Linears that share the input.
    pub group: u64,
}

impl ActivationStats {
    /// No statistics.
    pub fn new() -> ActivationStats {
        ActivationStats::default()
    }

    /// Sets the statistics of parameter `name`.
    pub fn insert(&mut self, name: impl Into<String>, sq_sums: Tensor, tokens: u64) {
        self.entries.insert(name.into(), (sq_sums, tokens));
    }

    /// The statistics of parameter `name`.
    pub fn get(&self, name: &str) -> Option<(&Tensor, u64)> {
        self.entries.get(name).map(|(t, n)| (t, *n))
    }

    /// Adds `sq_sums`, summed over `tokens` more tokens, to parameter `name`'s statistics (the
    /// training callback gathers them this way from the forwards of the steps between passes).
    pub fn accumulate(&mut self, name: &str, sq_sums: &Tensor, tokens: u64) -> crate::Result<()> {
        match self.entries.get_mut(name) {
            Some((acc, n)) => {
                let _ = acc.f_add_(sq_sums)?;
                *n += tokens;
            }
            None => {
                let copy = sq_sums.f_detach_copy()?;
                self.entries.insert(name.to_string(), (copy, tokens));
            }
        }
        Ok(())
    }

    /// Drops every statistic.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.hessians.clear();
    }

    /// Sets the Hessian statistics of parameter `name`.
    pub fn insert_hessian(&mut self, name: impl Into<String>, stat: HessianStat) {
        self.hessians.insert(name.into(), stat);
    }

    /// The Hessian statistics of parameter `name`.
    pub fn hessian(&self, name: &str) -> Option<&HessianStat> {
        self.hessians.get(name)
    }

    /// Whether any Hessian statistics were collected.
    pub fn has_hessians(&self) -> bool {
        !self.hessians.is_empty()
    }

    /// Names with statistics.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    /// Number of parameters with statistics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl ActivationStats {
    /// Statistics and Hessians as a calibration run records them: per name `(sq_sums, tokens)`
    /// and `(XᵀX, tokens, group)`.
    pub fn from_parts(
        sums: BTreeMap<String, (Tensor, u64)>,
        hessians: BTreeMap<String, (Tensor, u64, u64)>,
    ) -> ActivationStats {
        ActivationStats {
            entries: sums,
            hessians: hessians
                .into_iter()
                .map(|(n, (matrix, tokens, group))| {
                    (
                        n,
                        HessianStat {
                            matrix,
                            tokens,
                            group,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl From<BTreeMap<String, (Tensor, u64)>> for ActivationStats {
    /// Statistics from per-name `(sq_sums, tokens)`, as a calibration run records them.
    fn from(entries: BTreeMap<String, (Tensor, u64)>) -> ActivationStats {
        ActivationStats {
            entries,
            hessians: BTreeMap::new(),
        }
    }
}
