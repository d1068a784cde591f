//! Activation statistics handed to scorers: per input channel, the sum of squared inputs.

use std::collections::BTreeMap;

use tch::Tensor;

/// Per-parameter input statistics: `sq_sums[j] = Σ_tokens x_j²` (f32 `[in_features]`, on the
/// weight's device) and the number of tokens summed.
#[derive(Default)]
pub struct ActivationStats {
    entries: BTreeMap<String, (Tensor, u64)>,
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

impl From<BTreeMap<String, (Tensor, u64)>> for ActivationStats {
    /// Statistics from per-name `(sq_sums, tokens)`, as a calibration run records them.
    fn from(entries: BTreeMap<String, (Tensor, u64)>) -> ActivationStats {
        ActivationStats { entries }
    }
}
