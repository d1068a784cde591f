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
    undo::{self, Journal, JournalPlace},
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
                Planned::Mask { pruned, .. } | Planned::Values { pruned, .. } => pruned.get(),
            })
            .sum()
    }

    /// Applies every decision in place and returns the report and (when the pass config asks)
    /// the masks. What the writes overwrite is kept until they all completed: a failure among
    /// them restores every parameter, bit for bit, and returns the error.
    pub fn commit(self) -> Result<(PassReport, MaskSet)> {
        self.commit_with(true, false, JournalPlace::Host)
            .map(|(r, m, _)| (r, m))
    }

    /// [`PrunePlan::commit`], returning the journal of what was overwritten, so the pass can be
    /// taken back later ([`Journal::restore`]).
    pub fn commit_undoable(self) -> Result<(PassReport, MaskSet, Journal)> {
        self.commit_with(true, true, JournalPlace::Host)
            .map(|(r, m, j)| (r, m, j.expect("kept")))
    }

    /// [`PrunePlan::commit`] without the journal: faster and with no host copy, but a commit
    /// that fails midway leaves the model partly pruned.
    pub fn commit_unprotected(self) -> Result<(PassReport, MaskSet)> {
        self.commit_with(false, false, JournalPlace::Host)
            .map(|(r, m, _)| (r, m))
    }

    /// Keeps the journal of what the commit will overwrite, and nothing else: the weights are
    /// untouched. [`JournaledPlan::commit`] then only writes. A caller that is the weights'
    /// only writer (a server's pruning thread, say) takes the journal before it pauses its
    /// readers, so they wait for the writes alone; anything else that writes the weights in
    /// between would make the journal stale.
    pub fn journal_ahead(self, place: JournalPlace) -> Result<JournaledPlan> {
        let started = Instant::now();
        let _g = tch::no_grad_guard();
        let _span = tracing::debug_span!("journal", params = self.entries.len()).entered();
        let mut journal = Journal::new(place);
        let mut this = self;
        // On a GPU, the engines' fused rules are turned into masks first (one more read of
        // each weight, on the device), so the journal keeps only the values the pass zeroes
        // instead of a host copy of every weight. The writes are the same bits.
        for e in this.entries.iter_mut() {
            if let Planned::Lazy {
                scores, rule, what, ..
            } = &e.planned
            {
                if e.weight.device().is_cuda() {
                    let (bits, pruned) = engine::build_mask(scores, rule)?;
                    e.planned = Planned::Mask {
                        bits,
                        pruned,
                        what: what.clone(),
                    };
                }
            }
        }
        engine::mark(this.device, "(before the journal)");
        for e in &this.entries {
            match &e.planned {
                Planned::Keep => {}
                Planned::Lazy { .. } => journal.keep_whole(&e.weight)?,
                Planned::Mask { bits, .. } => journal.keep_pruned(&e.weight, bits)?,
                // Every kept weight changes too: the journal holds the whole weight.
                Planned::Values { .. } => journal.keep_whole(&e.weight)?,
            }
        }
        engine::mark(this.device, "commit: journal kept");
        Ok(JournaledPlan {
            plan: this,
            journal,
            journal_seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Writes every decision. With `rollback`, a journal is kept first and restored on failure;
    /// with `keep_journal` it is returned (compacted where that is smaller). `place` says where
    /// the journal keeps its copies.
    pub(crate) fn commit_with(
        self,
        rollback: bool,
        keep_journal: bool,
        place: JournalPlace,
    ) -> Result<(PassReport, MaskSet, Option<Journal>)> {
        let started = Instant::now();
        if rollback {
            return self.journal_ahead(place)?.write(keep_journal, started);
        }
        let _g = tch::no_grad_guard();
        let _span = tracing::debug_span!("commit", params = self.entries.len()).entered();
        let keep = self.config.keep_masks;
        let written = self.write(keep)?;
        let (report, masks, _) = self.finish(written, keep, started)?;
        Ok((report, masks, None))
    }

    /// After the writes: the masks, the counts and the report (and each written parameter's
    /// mask, in journal order, for compaction).
    #[allow(clippy::type_complexity)]
    fn finish(
        &self,
        written: (Vec<(Option<Tensor>, Count)>, Vec<Count>),
        keep: bool,
        started: Instant,
    ) -> Result<(PassReport, MaskSet, Vec<Option<Tensor>>)> {
        let mut masks = MaskSet::new();
        let mut params = Vec::with_capacity(self.entries.len());
        let (mut lazy_out, mut mask_out) = (written.0.into_iter(), written.1.into_iter());
        let mut counts = Vec::with_capacity(self.entries.len());
        let mut journal_bits = Vec::new();
        for e in &self.entries {
            let numel = e.weight.numel() as u64;
            let (pruned, what, mask) = match &e.planned {
                Planned::Keep => (Count::Ready(0), "keep".to_string(), None),
                Planned::Lazy { what, .. } => {
                    let (mask, pruned) = lazy_out.next().expect("one result per item");
                    journal_bits.push(mask.as_ref().map(Tensor::shallow_clone));
                    (pruned, what.clone(), mask.filter(|_| keep))
                }
                Planned::Mask { bits, what, .. } | Planned::Values { bits, what, .. } => {
                    journal_bits.push(None);
                    (
                        mask_out.next().expect("one result per item"),
                        what.clone(),
                        keep.then(|| bits.shallow_clone()),
                    )
                }
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
            scorer: self.scorer.clone(),
            strategy: self.strategy.clone(),
            target_sparsity: self.config.sparsity,
            nm: self.config.nm,
            device: format!("{:?}", self.device),
            params,
            total,
            pruned,
            sparsity: pruned as f64 / total.max(1) as f64,
            plan_seconds: self.plan_seconds,
            commit_seconds,
            journal_seconds: 0.0,
            journal_bytes: 0,
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
        Ok((report, masks, journal_bits))
    }

    /// Every write: the rules (batched on a GPU), then the masks and proposed values. One parameter at a time when
    /// a test armed a failure, so that it can fail between any two.
    #[allow(clippy::type_complexity)]
    fn write(&self, want_mask: bool) -> Result<(Vec<(Option<Tensor>, Count)>, Vec<Count>)> {
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
        let mask_writes = self
            .entries
            .iter()
            .filter(|e| matches!(e.planned, Planned::Mask { .. } | Planned::Values { .. }))
            .count();
        engine::mark(self.device, "(before the commit)");
        if !undo::failure_armed() {
            let lazy_out = engine::prune_many(&items, want_mask)?;
            engine::mark(self.device, "commit: rules applied");
            let mask_out = self.write_masks_and_values(|_| Ok(()))?;
            return Ok((lazy_out, mask_out));
        }
        let (mut lazy_out, mut mask_out, mut written) = (vec![], vec![], 0);
        for it in items.chunks(1) {
            undo::injected_failure(written)?;
            lazy_out.extend(engine::prune_many(it, want_mask)?);
            written += 1;
        }
        mask_out.extend(self.write_masks_and_values(|i| undo::injected_failure(written + i))?);
        undo::injected_failure(written + mask_writes)?;
        Ok((lazy_out, mask_out))
    }

    /// The mask and new-value writes, in entry order, calling `before(i)` ahead of the `i`-th
    /// (where a test injects a failure); masks are batched when nothing is injected.
    fn write_masks_and_values(&self, before: impl Fn(usize) -> Result<()>) -> Result<Vec<Count>> {
        let armed = undo::failure_armed();
        let mut out = Vec::new();
        let mut run: Vec<(&Tensor, &Tensor)> = Vec::new();
        let flush = |run: &mut Vec<(&Tensor, &Tensor)>, out: &mut Vec<Count>| -> Result<()> {
            if !run.is_empty() {
                out.extend(engine::apply_masks(run)?);
                run.clear();
            }
            Ok(())
        };
        let mut i = 0;
        for e in &self.entries {
            match &e.planned {
                Planned::Mask { bits, .. } => {
                    before(i)?;
                    run.push((&e.weight, bits));
                    if armed {
                        flush(&mut run, &mut out)?;
                    }
                }
                Planned::Values { values, pruned, .. } => {
                    flush(&mut run, &mut out)?;
                    before(i)?;
                    e.weight.shallow_clone().f_copy_(values)?;
                    out.push(Count::Ready(pruned.get()?));
                }
                _ => continue,
            }
            i += 1;
        }
        flush(&mut run, &mut out)?;
        Ok(out)
    }
}

/// A planned pass with its journal already kept ([`PrunePlan::journal_ahead`]): the weights
/// are untouched until [`JournaledPlan::commit`]. Dropping it abandons the pass.
pub struct JournaledPlan {
    plan: PrunePlan,
    journal: Journal,
    journal_seconds: f64,
}

impl JournaledPlan {
    /// Seconds the journal took.
    pub fn journal_seconds(&self) -> f64 {
        self.journal_seconds
    }

    /// [`PrunePlan::commit_undoable`] with the journal taken ahead: only the writes happen
    /// here. A failure among them restores every parameter from the journal and returns the
    /// error. The report's `commit_seconds` counts the writes alone.
    pub fn commit(self) -> Result<(PassReport, MaskSet, Journal)> {
        self.write(true, Instant::now())
            .map(|(r, m, j)| (r, m, j.expect("kept")))
    }

    fn write(
        self,
        keep_journal: bool,
        started: Instant,
    ) -> Result<(PassReport, MaskSet, Option<Journal>)> {
        let _g = tch::no_grad_guard();
        let JournaledPlan {
            plan,
            mut journal,
            journal_seconds,
        } = self;
        let _span = tracing::debug_span!("commit", params = plan.entries.len()).entered();
        let keep = plan.config.keep_masks;
        // CPU weights kept whole are compacted with the masks the writes produce.
        let want_mask = keep || (keep_journal && plan.device == Device::Cpu);
        let done = plan
            .write(want_mask)
            .and_then(|written| plan.finish(written, keep, started));
        let (mut report, masks, journal_bits) = match done {
            Ok(d) => d,
            Err(e) => {
                if let Err(r) = journal.restore() {
                    tracing::error!("commit failed ({e}); restoring the weights failed too: {r}");
                    return Err(crate::Error::Host(birdbone_host::Error::Invalid(format!(
                        "{e}; restoring the weights it had written failed too, so the model may be partly pruned: {r}"
                    ))));
                }
                tracing::warn!("commit failed; every written parameter was restored: {e}");
                return Err(e);
            }
        };
        report.journal_seconds = journal_seconds;
        report.journal_bytes = journal.bytes();
        let journal = if keep_journal {
            // Best effort: a parameter that cannot be compacted stays whole.
            journal.compact(&journal_bits);
            Some(journal)
        } else {
            None
        };
        Ok((report, masks, journal))
    }
}
