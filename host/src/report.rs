//! What a pass did, per parameter and in total: the account a caller prints or saves.

use serde::Serialize;

/// One parameter's line in a [`PassReport`].
#[derive(Clone, Debug, Serialize)]
pub struct ParamReport {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Weights it has.
    pub numel: u64,
    /// Weights this pass pruned (set to zero) in it.
    pub pruned: u64,
    /// `pruned / numel`.
    pub sparsity: f64,
    /// What the strategy decided, in words.
    pub decision: String,
}

/// What a pass did.
#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    /// The scorer and its configuration.
    pub scorer: String,
    /// The strategy and its configuration.
    pub strategy: String,
    /// The requested sparsity.
    pub target_sparsity: f64,
    /// The requested N:M pattern, if any.
    pub nm: Option<(u32, u32)>,
    /// Where the weights live.
    pub device: String,
    /// Per parameter.
    pub params: Vec<ParamReport>,
    /// Weights in the pruned parameters.
    pub total: u64,
    /// Weights pruned.
    pub pruned: u64,
    /// `pruned / total`.
    pub sparsity: f64,
    /// Seconds planning took (scoring, selection, mask building).
    pub plan_seconds: f64,
    /// Seconds committing took (writing the weights), the rollback journal included.
    pub commit_seconds: f64,
    /// Seconds of the commit spent keeping what it overwrites (0 with rollback off).
    pub journal_seconds: f64,
    /// Host memory the rollback journal took (0 with rollback off).
    pub journal_bytes: u64,
}

impl PassReport {
    /// One report for passes that together pruned the model (the blocks of a sequential
    /// calibration): their parameters, totals and times. `None` for no passes.
    pub fn merge(parts: Vec<PassReport>) -> Option<PassReport> {
        let mut it = parts.into_iter();
        let mut all = it.next()?;
        for p in it {
            all.params.extend(p.params);
            all.total += p.total;
            all.pruned += p.pruned;
            all.plan_seconds += p.plan_seconds;
            all.commit_seconds += p.commit_seconds;
            all.journal_seconds += p.journal_seconds;
            all.journal_bytes += p.journal_bytes;
        }
        all.sparsity = all.pruned as f64 / all.total.max(1) as f64;
        Some(all)
    }

    /// A table for a terminal.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{:<56} {:>16} {:>12} {:>9}\n",
            "parameter", "shape", "pruned", "sparsity"
        ));
        for p in &self.params {
            s.push_str(&format!(
                "{:<56} {:>16} {:>12} {:>8.2}%\n",
                p.name,
                format!("{:?}", p.shape),
                p.pruned,
                100.0 * p.sparsity
            ));
        }
        s.push_str(&format!(
            "total: {} of {} weights pruned ({:.4}%) by {} + {} on {}; plan {:.3} s, commit {:.3} s\n",
            self.pruned,
            self.total,
            100.0 * self.sparsity,
            self.scorer,
            self.strategy,
            self.device,
            self.plan_seconds,
            self.commit_seconds
        ));
        s
    }
}
