//! A pruning pass in two phases. *Plan* runs the scorer and the strategy and records a decision
//! per parameter; nothing in the model changes, so any failure (a plugin error or panic, a NaN,
//! a bad configuration, running out of memory) leaves it untouched. *Commit* then applies every
//! decision in place, under no_grad: the weights keep their storage, and no copy of them is
//! made.
//!
//! - `plan`: gathering the parameters, running the strategy through the host's plan driver,
//!   the finiteness checks that must pass before any write.
//! - `backend`: the tensor work the driver asks for (scores, exact selections).
//! - `commit`: the writes, the report and the masks.
//! - `sequential`: block after block as one transaction (the papers' sequential calibration).

mod backend;
mod commit;
mod plan;
mod sequential;

use std::collections::BTreeMap;

use tch::Tensor;

pub use commit::{JournaledPlan, PrunePlan};
pub use plan::Pruner;
pub use sequential::SequentialPass;

use crate::stats::ActivationStats;

/// Inputs to a pass besides the weights.
#[derive(Default, Clone, Copy)]
pub struct PassInputs<'a> {
    /// Activation statistics, for scorers that need them.
    pub stats: Option<&'a ActivationStats>,
    /// Rows no selection may prune (bool `[rows]` per parameter name; growth plates): their
    /// weights score above every other, so an exact selection takes its count elsewhere.
    pub protected_rows: Option<&'a BTreeMap<String, Tensor>>,
    /// The load on each parameter's layer, for allocators that declare `InputSet::LOAD`:
    /// `(sparsity, calibration loss)` with the layer pruned alone, the dense model first
    /// (`birdbone_llama::layer_load` measures it).
    pub load: Option<&'a BTreeMap<String, Vec<(f64, f64)>>>,
}

/// Parameters per batch of a per-row selection (see `TchPlan::select_rows`).
const ROW_BATCH: usize = 32;
