//! The plugin-author SDK: safe wrappers over the ABI, panic catching, and the export macro.
//!
//! A minimal scorer plugin:
//!
//! ```ignore
//! use birdbone_host_api::sdk::prelude::*;
//!
//! struct Abs;
//! impl ScorerImpl for Abs {
//!     fn score(&mut self, _: &ParamInfo, _: &ScoreInputs, _: ScoreRequest) -> Result<ScoreOut> {
//!         Ok(ScoreOut::Magnitude { column_scale: RNone })
//!     }
//! }
//!
//! struct MyPlugin;
//! impl Plugin for MyPlugin {
//!     const NAME: &'static str = "my-plugin";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const DESCRIPTION: &'static str = "Scores weights by magnitude";
//!     fn components() -> Vec<ComponentInfo> {
//!         vec![ComponentInfo::scorer("my-abs", "|W|")]
//!     }
//!     fn create_scorer(name: &str, _: &Config, _: Host) -> Result<Box<dyn ScorerImpl>> {
//!         match name { "my-abs" => Ok(Box::new(Abs)), _ => Err(unknown_component(name)) }
//!     }
//! }
//! birdbone_host_api::export_plugin!(MyPlugin);
//! ```
//!
//! The plugin crate sets `crate-type = ["cdylib", "rlib"]` and depends on `birdbone-host-api`
//! and `abi_stable` (whose `export_root_module` attribute the macro uses).

mod config;
mod host;
mod info;
mod linalg;
mod plan;
mod plugin;

pub use config::Config;
pub use host::{AsTensorId, Host, OwnedTensor};
pub use plan::Plan;
pub use plugin::{
    catch_panics, module_for, root_module, unknown_component, Plugin, ScorerImpl, StrategyImpl,
};

/// The result type of SDK calls.
pub type Result<T, E = crate::PluginError> = std::result::Result<T, E>;

/// The exact number of weights to prune out of `n` at `sparsity`: `round(sparsity × n)`, with
/// halves rounded away from zero, as every built-in strategy counts.
pub fn exact_count(sparsity: f64, n: u64) -> u64 {
    ((sparsity * n as f64).round() as u64).min(n)
}

/// `total` split over parts of sizes `sizes` in proportion to them, exactly: each part gets the
/// floor of its share, and what is left goes one each to the parts with the largest remainders
/// (ties: the earlier part). Parts of equal size differ by at most one, the earlier ones first.
pub fn split_count(total: u64, sizes: &[u64]) -> Vec<u64> {
    let n: u64 = sizes.iter().sum();
    if n == 0 {
        return vec![0; sizes.len()];
    }
    // Exact integer shares: floor(total · size / n) and the remainder of the division.
    let shares: Vec<(u64, u128)> = sizes
        .iter()
        .map(|&s| {
            let x = total as u128 * s as u128;
            ((x / n as u128) as u64, x % n as u128)
        })
        .collect();
    let mut out: Vec<u64> = shares.iter().map(|s| s.0).collect();
    let left = total - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by(|&a, &b| shares[b].1.cmp(&shares[a].1).then(a.cmp(&b)));
    for &i in order.iter().take(left as usize) {
        out[i] += 1;
    }
    out
}

/// Everything a plugin usually needs.
pub mod prelude {
    pub use super::{
        exact_count, split_count, unknown_component, AsTensorId, Config, Host, OwnedTensor, Plan,
        Plugin, Result, ScorerImpl, StrategyImpl,
    };
    pub use crate::{
        BinaryOp, Capabilities, ComponentInfo, ComponentKind, DType, Decision, Device, DeviceKind,
        DeviceSet, ErrorCode, Granularity, GranularitySet, Hessian, InputSet, LoadPoint, NmPattern,
        ParamInfo, ParamKind, ParamSpec, ParamValue, PluginError, ReduceOp, ScoreInputs, ScoreOut,
        ScoreRequest, SelectScope, Selection, Target, Tensor, TensorId, UnaryOp,
    };
    pub use abi_stable::std_types::{RNone, ROption, RSome};
}

/// Exports a type implementing [`Plugin`] as this library's Birdbone root module.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // Inside an anonymous const so the generated items need no docs; the exported symbol
        // keeps its name all the same.
        const _: () = {
            /// The Birdbone root module of this library. abi_stable checks its layout against
            /// the host's before this runs.
            #[$crate::abi_stable::export_root_module]
            pub fn birdbone_plugin_root() -> $crate::PluginModule_Ref {
                $crate::sdk::root_module::<$plugin>()
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::split_count;

    #[test]
    fn split_count_is_exact_and_proportional() {
        assert_eq!(split_count(10, &[128, 128, 64]), vec![4, 4, 2]);
        assert_eq!(split_count(7, &[3, 3, 3]), vec![3, 2, 2]);
        assert_eq!(split_count(0, &[5, 5]), vec![0, 0]);
        assert_eq!(split_count(3, &[0, 0]), vec![0, 0]);
        let parts = split_count(1_000_003, &[576 * 128, 576 * 128, 576 * 64]);
        assert_eq!(parts.iter().sum::<u64>(), 1_000_003);
    }
}
