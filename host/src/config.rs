//! What a pass is asked for: the sparsity, an optional N:M pattern, whether masks are kept,
//! and which parameters.

use birdbone_host_api::{NmPattern, Target};
use serde::Serialize;

use crate::{error::Result, filter::ParamFilter};

/// What a pass is asked for, besides its components.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct PassConfig {
    /// Fraction of the selected weights to prune, in `[0, 1]`.
    pub sparsity: f64,
    /// An N:M pattern (`n` kept of every `m`), for strategies that use one.
    pub nm: Option<(u32, u32)>,
    /// Keep a 1-bit mask per weight after the pass (for re-applying after optimizer steps and
    /// for saving). Costs one bit per pruned parameter's weight.
    pub keep_masks: bool,
    /// Which parameters to prune.
    pub filter: ParamFilter,
    /// Exact counts per parameter from an allocator ([`crate::Allocation`]); the strategy
    /// reads them. `None`: the strategy's own `round(sparsity · n)` per scope.
    #[serde(skip)]
    pub allocation: Option<std::sync::Arc<crate::Allocation>>,
}

impl Default for PassConfig {
    fn default() -> Self {
        PassConfig {
            sparsity: 0.5,
            nm: None,
            keep_masks: true,
            filter: ParamFilter::default(),
            allocation: None,
        }
    }
}

impl PassConfig {
    /// The target handed to the strategy, after checking the numbers make sense.
    pub fn target(&self) -> Result<Target> {
        if !(0.0..=1.0).contains(&self.sparsity) {
            crate::bail!("sparsity must be between 0 and 1, got {}", self.sparsity);
        }
        if let Some((n, m)) = self.nm {
            if m == 0 || n > m || m > 32 {
                crate::bail!("N:M pattern {n}:{m} is not valid (need 0 <= N <= M, 1 <= M <= 32)");
            }
        }
        Ok(Target {
            sparsity: self.sparsity,
            nm: self.nm.map(|(n, m)| NmPattern { n, m }).into(),
        })
    }
}
