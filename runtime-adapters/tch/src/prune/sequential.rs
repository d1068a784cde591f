//! A sequential pass: decoder blocks pruned one after another, each calibrated on the outputs
//! of the blocks before it as they were rewritten (the Wanda and SparseGPT papers' procedure).
//! Each block is planned and committed on its own, but the pass is one transaction: every
//! block's journal is kept until [`SequentialPass::finish`], and a failure in any block (or in
//! the calibration between blocks) restores every block already written, newest first, bit for
//! bit.

use std::ops::{Deref, DerefMut};

use birdbone_host::{PassConfig, PassReport};

use super::{plan::block_config, PassInputs, Pruner};
use crate::{
    error::Result, mask::MaskSet, params::ParamSource, stats::ActivationStats, undo::Journal,
};

/// The pruner a pass runs: borrowed ([`Pruner::sequential`]), or owned
/// ([`Pruner::into_sequential`]) by a caller that cannot hold a borrow across calls (a Python
/// object lives between the calls that feed it blocks).
enum PrunerRef<'p> {
    Borrowed(&'p mut Pruner),
    Owned(Box<Pruner>),
}

impl Deref for PrunerRef<'_> {
    type Target = Pruner;
    fn deref(&self) -> &Pruner {
        match self {
            PrunerRef::Borrowed(p) => p,
            PrunerRef::Owned(p) => p,
        }
    }
}

impl DerefMut for PrunerRef<'_> {
    fn deref_mut(&mut self) -> &mut Pruner {
        match self {
            PrunerRef::Borrowed(p) => p,
            PrunerRef::Owned(p) => p,
        }
    }
}

/// The journals of the blocks written so far. Dropped while it still holds one (a pass dropped
/// unfinished, an error returned with `?` between blocks), it restores them: the transaction
/// does not depend on the caller remembering to abandon.
#[derive(Default)]
struct Written(Vec<Journal>);

impl Written {
    /// Restores every block written, newest first; the journals are spent either way.
    fn restore(&mut self) -> Result<()> {
        let mut first = None;
        for j in self.0.drain(..).rev() {
            if let Err(e) = j.restore() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for Written {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        match self.restore() {
            Ok(()) => tracing::warn!(
                "an unfinished sequential pass was dropped: its blocks were restored"
            ),
            Err(e) => {
                tracing::error!("an unfinished sequential pass could not restore its blocks: {e}")
            }
        }
    }
}

/// A sequential pass in progress, from [`Pruner::sequential`] or [`Pruner::into_sequential`].
/// Dropping it unfinished (an error returned with `?` between blocks, say) restores every block
/// it wrote.
pub struct SequentialPass<'p> {
    pruner: PrunerRef<'p>,
    config: PassConfig,
    written: Written,
    reports: Vec<PassReport>,
    masks: MaskSet,
}

impl Pruner {
    /// Starts a sequential pass: blocks pruned one after another, each kept in a journal until
    /// the pass finishes, so a failure in any block puts back every block written before it.
    pub fn sequential(&mut self, config: &PassConfig) -> SequentialPass<'_> {
        SequentialPass::new(PrunerRef::Borrowed(self), config)
    }

    /// [`Pruner::sequential`] on a pass that owns the pruner, for callers that keep the pass
    /// between calls (the Python front); [`SequentialPass::finish_owned`] gives it back.
    pub fn into_sequential(self, config: &PassConfig) -> SequentialPass<'static> {
        SequentialPass::new(PrunerRef::Owned(Box::new(self)), config)
    }
}

impl<'p> SequentialPass<'p> {
    fn new(pruner: PrunerRef<'p>, config: &PassConfig) -> SequentialPass<'p> {
        SequentialPass {
            pruner,
            config: config.clone(),
            written: Written::default(),
            reports: Vec::new(),
            masks: MaskSet::new(),
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
                self.written.0.extend(journal);
                self.masks.extend(masks);
                self.reports.push(report);
                Ok(self.reports.last())
            }
            Err(e) => Err(self.abandon_with(e)),
        }
    }

    /// Ends the pass: the merged report and the masks. With the pruner's undo policy keeping
    /// passes, the whole sequential pass is one entry of its history.
    pub fn finish(self) -> Result<(PassReport, MaskSet)> {
        self.finish_owned()
            .map(|(report, masks, _)| (report, masks))
    }

    /// [`SequentialPass::finish`], also giving back the pruner of [`Pruner::into_sequential`]
    /// (its undo history holds the pass when its policy keeps passes); `None` when borrowed.
    pub fn finish_owned(mut self) -> Result<(PassReport, MaskSet, Option<Pruner>)> {
        let report = PassReport::merge(std::mem::take(&mut self.reports)).ok_or_else(|| {
            birdbone_host::Error::Invalid("no block had a parameter to prune".into())
        })?;
        // The pass is complete: its journals are no longer a rollback, only (maybe) an undo.
        let journals = std::mem::take(&mut self.written.0);
        let (policy, history) = self.pruner.undo_policy_and_history();
        if policy.passes > 0 {
            let mut all = Journal::default();
            for j in journals {
                all.append(j);
            }
            history.push(all, &policy);
        }
        let pruner = match self.pruner {
            PrunerRef::Owned(p) => Some(*p),
            PrunerRef::Borrowed(_) => None,
        };
        Ok((report, self.masks, pruner))
    }

    /// Abandons the pass: every block written is restored, newest first.
    pub fn abandon(mut self) -> Result<()> {
        self.written.restore()
    }

    /// Restores every block after `e` and returns the error to report.
    fn abandon_with(&mut self, e: crate::Error) -> crate::Error {
        let written = self.written.0.len();
        match self.written.restore() {
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
