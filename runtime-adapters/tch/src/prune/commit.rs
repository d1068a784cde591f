//! Committing a planned pass: every decision applied in place, under no_grad, in the weights'
//! own storage; then the report and the masks.

use std::time::Instant;

use birdbone_host::{ParamReport, PassConfig, PassReport};
use tch::{Device, Tensor};

use super::plan::{sync, Planned};
use crate::{
    engine::{self, Count},
    error::Result,
    mask::{MaskSet, ParamMask},
};

/// One parameter of a planned pass and its planned work.
pub(super) struct PlannedParam {
    pub name: String,
    pub weight: Tensor,
    pub planned: Planned,
}

/// A planned pass: decisions made, model untouched. Dropping it abandons the pass.
pub struct PrunePlan {
    pub(super) entries: Vec<PlannedParam>,
    /// The scorer and the strategy in words, for the report.
    pub(super) scorer: String,
    pub(super) strategy: String,
    pub(super) config: PassConfig,
    pub(super) device: Device,
    pub(super) plan_seconds: f64,
}

impl PrunePlan {
    /// Weights the plan will prune.
    pub fn pruned(&self) -> Result<u64> {
        self.entries
            .iter()
            .map(|e| match &e.planned {
                Planned::Keep => Ok(0),
                Planned::Lazy { pruned, .. } => Ok(*pruned),
                Planned::Mask { pruned, .. } => pruned.get(),
            })
            .sum()
    }

    /// Applies every decision in place and returns the report and (when the pass config asks)
    /// the masks.
    pub fn commit(self) -> Result<(PassReport, MaskSet)> {
        let started = Instant::now();
        let _g = tch::no_grad_guard();
        let _span = tracing::debug_span!("commit", params = self.entries.len()).entered();
        let mut masks = MaskSet::new();
        let mut params = Vec::with_capacity(self.entries.len());
        let keep = self.config.keep_masks;
        // Every write is launched in batches first (a handful of kernels on a GPU)...
        let lazy: Vec<usize> = (0..self.entries.len())
            .filter(|&i| matches!(self.entries[i].planned, Planned::Lazy { .. }))
            .collect();
        let items: Vec<engine::PruneItem<'_>> = lazy
            .iter()
            .map(|&i| match &self.entries[i].planned {
                Planned::Lazy { scores, rule, .. } => engine::PruneItem {
                    weight: &self.entries[i].weight,
                    scores,
                    rule,
                },
                _ => unreachable!("filtered"),
            })
            .collect();
        engine::mark(self.device, "(before the commit)");
        let mut lazy_out = engine::prune_many(&items, keep)?.into_iter();
        engine::mark(self.device, "commit: rules applied");
        let masked: Vec<usize> = (0..self.entries.len())
            .filter(|&i| matches!(self.entries[i].planned, Planned::Mask { .. }))
            .collect();
        let mask_items: Vec<(&Tensor, &Tensor)> = masked
            .iter()
            .map(|&i| match &self.entries[i].planned {
                Planned::Mask { bits, .. } => (&self.entries[i].weight, bits),
                _ => unreachable!("filtered"),
            })
            .collect();
        let mut mask_out = engine::apply_masks(&mask_items)?.into_iter();
        // ...then the report and masks are gathered.
        let mut counts = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let numel = e.weight.numel() as u64;
            let (pruned, what, mask) = match &e.planned {
                Planned::Keep => (Count::Ready(0), "keep".to_string(), None),
                Planned::Lazy { what, .. } => {
                    let (mask, pruned) = lazy_out.next().expect("one result per item");
                    (pruned, what.clone(), mask)
                }
                Planned::Mask { bits, what, .. } => (
                    mask_out.next().expect("one result per item"),
                    what.clone(),
                    keep.then(|| bits.shallow_clone()),
                ),
            };
            if let Some(bits) = mask {
                masks.insert(
                    e.name.clone(),
                    ParamMask {
                        shape: e.weight.size(),
                        bits,
                    },
                );
            }
            counts.push(pruned);
            params.push(ParamReport {
                name: e.name.clone(),
                shape: e.weight.size(),
                numel,
                pruned: 0,
                sparsity: 0.0,
                decision: what,
            });
        }
        sync(self.device);
        engine::mark(self.device, "commit: masks and report");
        let commit_seconds = started.elapsed().as_secs_f64();
        // Counts come back after every write was launched: one wait on a GPU.
        for (p, c) in params.iter_mut().zip(&counts) {
            p.pruned = c.get()?;
            p.sparsity = p.pruned as f64 / p.numel.max(1) as f64;
        }
        let total: u64 = params.iter().map(|p| p.numel).sum();
        let pruned: u64 = params.iter().map(|p| p.pruned).sum();
        let report = PassReport {
            scorer: self.scorer,
            strategy: self.strategy,
            target_sparsity: self.config.sparsity,
            nm: self.config.nm,
            device: format!("{:?}", self.device),
            params,
            total,
            pruned,
            sparsity: pruned as f64 / total.max(1) as f64,
            plan_seconds: self.plan_seconds,
            commit_seconds,
        };
        tracing::debug!(
            pruned = report.pruned,
            total = report.total,
            plan_s = report.plan_seconds,
            commit_s = report.commit_seconds,
            "pass committed by {} + {}",
            report.scorer,
            report.strategy
        );
        Ok((report, masks))
    }
}
