//! The Birdbone host over tch (libtorch).
//!
//! - [`PluginRegistry`] finds plugin libraries, checks them (abi_stable's layout check, the
//!   Birdbone ABI version, host capabilities, unique component names) and creates components.
//! - [`Pruner`] runs a pass: plan (score, select, decide: the model is untouched), then commit
//!   (weights written in place, under no_grad, in their own storage).
//! - [`MaskSet`] keeps one bit per weight so pruning survives optimizer steps, and saves it.
//! - [`ParamSource`] is where weights come from: a `VarStore`, a `CModule`, or any named list.
//!
//! ```ignore
//! let registry = PluginRegistry::discover(&["target/release".into()]);
//! let mut pruner = Pruner::new(&registry, "magnitude", &Default::default(), "global", &Default::default())?;
//! let (report, masks) = pruner.run(&var_store, &PassConfig { sparsity: 0.5, ..Default::default() }, PassInputs::default())?;
//! println!("{}", report.to_table());
//! ```

pub mod checkpoint;
mod deferred;
pub mod direct;
mod engine;
mod error;
mod mask;
mod ops;
mod params;
mod prune;
mod registry;
mod stats;
mod tensors;
pub mod train;

pub use error::{Error, Result};
pub use mask::{MaskSet, ParamMask};
pub use ops::host_ops;
pub use params::{glob_match, role_of, ParamFilter, ParamSource};
pub use prune::{ParamReport, PassConfig, PassInputs, PassReport, PrunePlan, Pruner};
pub use registry::{
    complete_config, Component, ComponentRef, LoadSummary, LoadedPlugin, PluginRegistry, Rejected,
    PLUGIN_PATH_ENV,
};
pub use stats::ActivationStats;
pub use tensors::{dtype_of, kind_of, plugin_owned_count};

/// Exact k-th smallest over a set of tensors (see [`birdbone_host_api::HostOps::kth_value`]).
pub fn kth_value(xs: &[tch::Tensor], k: u64) -> Result<birdbone_host_api::KthValue> {
    let _g = tch::no_grad_guard();
    ops::kth_of(xs, k)
}
