//! A sequential pass: decoder blocks pruned one after another, each calibrated on the outputs
//! of the blocks before it as they were rewritten (the Wanda and SparseGPT papers' procedure).
//! Each block is planned and committed on its own, but the pass is one transaction: every
//! block's journal is kept until [`SequentialPass::finish`], and a failure in any block (or in
//! the calibration between blocks) restores every block already written, newest first, bit for
//! bit.

use birdbone_host::{PassConfig, PassReport};

use super::{plan::block_config, PassInputs, Pruner};
use crate::{
    error::Result, mask::MaskSet, params::ParamSource, stats::ActivationStats, undo::Journal,
};

/// A sequential pass in progress, from [`Pruner::sequential`]. Dropping it unfinished (an error
/// returned with `?` between blocks, say) restores every block it wrote.
pub struct SequentialPass<'p> {
    pruner: &'p mut Pruner,
    config: PassConfig,
    journals: Vec<Journal>,
    reports: Vec<PassReport>,
    masks: MaskSet,
    settled: bool,
}

impl<'p> SequentialPass<'p> {
    pub(super) fn new(pruner: &'p mut Pruner, config: PassConfig) -> SequentialPass<'p> {
        SequentialPass {
            pruner,
            config,
            journals: Vec::new(),
            reports: Vec::new(),
            masks: MaskSet::new(),
            settled: false,
        }
    }

    /// Prunes the weights of one block (those of `names` the pass's filter selects) with the
    /// statistics collected on the block's inputs. On failure every block of the pass is
    /// restored (this one by its own commit, the earlier ones from their journals) and the
    /// error returned; the pass is then over.
    pub fn block(
        &mut self,
        model: &(impl ParamSource + ?Sized),
        names: &[String],
        stats: &ActivationStats,
    ) -> Result<Option<&PassReport>> {
        let Some(cfg) = block_config(names, &self.config) else {
            return Ok(None);
        };
        let policy = self.pruner.undo_policy();
        let inputs = PassInputs {
            stats: Some(stats),
            ..Default::default()
        };
        let done = self
            .pruner
            .plan(model, &cfg, inputs)
            .and_then(|plan| plan.commit_with(policy.rollback, policy.rollback, policy.journal));
        match done {
            Ok((report, masks, journal)) => {
                self.journals.extend(journal);
                self.masks.extend(masks);
                self.reports.push(report);
                Ok(self.reports.last())
            }
            Err(e) => Err(self.abandon_with(e)),
        }
    }

    /// Ends the pass: the merged report and the masks. With the pruner's undo policy keeping
    /// passes, the whole sequential pass is one entry of its history.
    pub fn finish(mut self) -> Result<(PassReport, MaskSet)> {
        self.settled = true;
        let report = PassReport::merge(std::mem::take(&mut self.reports)).ok_or_else(|| {
            birdbone_host::Error::Invalid("no block had a parameter to prune".into())
        })?;
        let (policy, history) = self.pruner.undo_policy_and_history();
        if policy.passes > 0 {
            let mut all = Journal::default();
            for j in std::mem::take(&mut self.journals) {
                all.append(j);
            }
            history.push(all, &policy);
        }
        Ok((report, std::mem::take(&mut self.masks)))
    }

    /// Abandons the pass: every block written is restored, newest first.
    pub fn abandon(mut self) -> Result<()> {
        self.settled = true;
        self.restore()
    }

    fn restore(&mut self) -> Result<()> {
        let mut first = None;
        for j in self.journals.drain(..).rev() {
            if let Err(e) = j.restore() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Restores every block after `e` and returns the error to report.
    fn abandon_with(&mut self, e: crate::Error) -> crate::Error {
        self.settled = true;
        let written = self.journals.len();
        match self.restore() {
            Ok(()) => {
                if written > 0 {
                    tracing::warn!("sequential pass failed; the {written} blocks it had written were restored: {e}");
                }
                e
            }
            Err(r) => crate::Error::Host(birdbone_host::Error::Invalid(format!(
                "{e}; restoring the blocks written before it failed too, so the model may be partly pruned: {r}"
            ))),
        }
    }
}

impl Drop for SequentialPass<'_> {
    fn drop(&mut self) {
        if !self.settled && !self.journals.is_empty() {
            if let Err(e) = self.restore() {
                tracing::error!("an unfinished sequential pass could not restore its blocks: {e}");
            } else {
                tracing::warn!(
                    "an unfinished sequential pass was dropped: its blocks were restored"
                );
            }
        }
    }
}
