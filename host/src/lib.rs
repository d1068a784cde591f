//! Birdbone's framework-neutral host: everything between the plugin ABI and a tensor library.
//!
//! - [`PluginRegistry`] finds plugin libraries, checks them (abi_stable's layout check, the
//!   Birdbone ABI version, host capabilities, unique component names or a newer version of a
//!   component, which replaces the older live), says why it refused any, and creates components. [`trust`] is what it checks before a file's code runs at all
//!   (permissions, an allowlist, a probe in a child process).
//! - [`PassConfig`] and [`ParamFilter`] say what a pass is asked for and which parameters.
//! - [`plan::PlanDriver`] is the context a strategy plans through: it checks and records every
//!   selection and decision, over the tensor work an adapter provides ([`plan::PlanBackend`]).
//! - [`PassReport`] is what a pass did; [`mask_file`] is how masks are stored.
//! - [`Recipe`] is how a model is pruned, as a file says it (YAML or JSON, or an
//!   llm-compressor recipe); [`schedule`] is its training part (schedules, growth plates).
//!
//! Nothing here depends on a tensor library: an adapter (`birdbone-tch` today) supplies
//! parameters, host operations and the engines, and re-exports these items.

pub mod allocation;
mod config;
mod error;
mod filter;
pub mod llm_compressor;
pub mod mask_file;
pub mod plan;
pub mod recipe;
mod registry;
mod report;
pub mod schedule;
pub mod trust;
mod upgrade;

pub use allocation::{AllocatedParam, Allocation};
pub use config::PassConfig;
pub use error::{Error, Result};
pub use filter::{glob_match, role_of, ParamFilter};
pub use recipe::Recipe;
pub use registry::{
    complete_config, probe_library, Component, ComponentRef, LoadSummary, LoadedPlugin,
    PluginRegistry, Rejected, Role, PLUGIN_PATH_ENV,
};
pub use report::{ParamReport, PassReport};
pub use trust::{Allowlist, ProbeChoice, TrustPolicy};
pub use upgrade::{parse_version, Upgrade};

/// For binaries: logs from the libraries (`tracing`) on standard error, filtered by `RUST_LOG`
/// (default: warnings), e.g. `RUST_LOG=birdbone_tch::steps=trace` for per-step times of each
/// pass. Libraries only emit events; installing a subscriber is the program's choice.
#[cfg(feature = "logging")]
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
