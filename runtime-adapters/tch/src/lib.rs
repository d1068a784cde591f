//! Birdbone's adapter for tch (libtorch): what touches tch tensors.
//!
//! - [`ParamSource`] is where weights come from: a `VarStore`, a `CModule`, or any named list.
//! - [`host_ops`] is the host-operation table plugins do their tensor work through.
//! - [`Pruner`] runs a pass: plan (score, select, decide through the host's plan driver: the
//!   model is untouched), then commit (weights written in place, under no_grad, in their own
//!   storage). The engines do the selection: `birdbone-select` on the CPU, `birdbone-cuda` on
//!   a GPU.
//! - [`undo`]: a failed commit is rolled back bit for bit; completed passes can be taken back
//!   ([`Pruner::undo`]).
//! - [`MaskSet`] keeps one bit per weight so pruning survives optimizer steps, and saves it.
//! - [`train`] is the training callback: schedules, masks held after every step, growth plates.
//!
//! The framework-neutral pieces (plugin loading, configuration, reports) come from
//! `birdbone-host` and are re-exported here, so one `use birdbone_tch::...` serves a program.
//!
//! ```ignore
//! let registry = PluginRegistry::discover(&["target/release".into()]);
//! let mut pruner = Pruner::new(&registry, "magnitude", &Default::default(), "global", &Default::default())?;
//! let (report, masks) = pruner.run(&var_store, &PassConfig { sparsity: 0.5, ..Default::default() }, PassInputs::default())?;
//! println!("{}", report.to_table());
//! ```

mod deferred;
pub mod direct;
mod engine;
/// libtorch's current CUDA stream, as the CUDA engine's launches use it.
pub use engine::stream as cuda_stream;
mod error;
mod mask;
mod ops;
mod params;
mod prune;
mod stats;
mod tensors;
pub mod train;
pub mod undo;

pub use birdbone_host::{
    complete_config, glob_match, role_of, Allocation, Component, ComponentRef, LoadSummary,
    LoadedPlugin, ParamFilter, ParamReport, PassConfig, PassReport, PluginRegistry, Rejected,
    PLUGIN_PATH_ENV,
};
pub use error::{Error, HostError, Result};
pub use mask::{MaskSet, ParamMask};
pub use ops::host_ops;
pub use params::{selected, ParamSource};
pub use prune::{JournaledPlan, PassInputs, PrunePlan, Pruner, SequentialPass};
pub use stats::{ActivationStats, HessianStat};
pub use tensors::{dtype_of, kind_of, plugin_owned_count};
pub use undo::{Journal, JournalPlace, UndoHistory, UndoPolicy};

/// SparseGPT's column sweep over one block, in place (see
/// [`birdbone_host_api::HostOps::obs_sweep`]): `w` f32 `[rows, b]`, `hinv` f32 `[b, b]`, `prune`
/// bool `[rows, b]`; returns the errors. The same operations on the CPU and CUDA.
pub fn obs_sweep(
    w: &tch::Tensor,
    hinv: &tch::Tensor,
    prune: &tch::Tensor,
    nm: Option<birdbone_host_api::NmPattern>,
) -> Result<tch::Tensor> {
    let _g = tch::no_grad_guard();
    ops::obs_sweep_checked(w, hinv, prune, nm)
}

/// Exact k-th smallest over a set of tensors (see [`birdbone_host_api::HostOps::kth_value`]).
pub fn kth_value(xs: &[tch::Tensor], k: u64) -> Result<birdbone_host_api::KthValue> {
    let _g = tch::no_grad_guard();
    ops::kth_of(xs, k)
}
