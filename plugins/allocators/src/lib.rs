//! Birdbone's built-in allocators (ABI 1.2): a sparsity for each parameter, decided over the
//! whole model before any selection. The host makes the answer exact (integer counts summing
//! to `round(s · N)`); strategies read the counts.
//!
//! - `uniform`: the target everywhere;
//! - `owl`: outlier-weighted layer-wise sparsity (Yin et al., 2023), over the pass's scorer;
//! - `birdbone`: the project's own: each layer's load measured (the calibration loss with it
//!   pruned alone), the sparsities that minimise the modelled total damage under the budget.

#![deny(missing_docs)]

mod birdbone;
mod layers;
mod owl;

use birdbone_host_api::sdk::prelude::*;

/// An allocator is never asked to select.
fn not_a_strategy(name: &str) -> PluginError {
    PluginError::invalid(format!(
        "'{name}' is an allocator: give it as the allocator, with a strategy such as layerwise"
    ))
}

struct Uniform;

impl StrategyImpl for Uniform {
    fn select(&mut self, _plan: &mut Plan<'_>, _target: &Target) -> Result<()> {
        Err(not_a_strategy("uniform"))
    }

    fn allocate(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<Vec<f64>> {
        Ok(vec![target.sparsity; plan.params().len()])
    }
}

/// The plugin.
pub struct AllocatorsPlugin;

impl Plugin for AllocatorsPlugin {
    const NAME: &'static str = "allocators";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Allocators: a sparsity per parameter before selection";

    fn components() -> Vec<ComponentInfo> {
        vec![
            ComponentInfo::allocator(
                "uniform",
                "the target sparsity in every parameter, made exact over the model",
            ),
            ComponentInfo::allocator(
                "owl",
                "OWL (Yin et al., 2023): layers with more outlier scores (> M x the layer mean) pruned less, spread over 2 x lambda around the target",
            )
            .param("M", ParamValue::Float(5.0), "outlier threshold, a multiple of the layer's mean score")
            .param("lambda", ParamValue::Float(0.08), "the largest distance of a layer's sparsity from the target")
,
            ComponentInfo::allocator(
                "birdbone",
                "each layer's load measured (the calibration loss with it pruned alone); the sparsities with the least modelled damage under the budget",
            )
            .param("max_shift", ParamValue::Float(0.1), "the largest distance of a layer's sparsity from the target")
            .inputs(InputSet::LOAD)
            .requires("inputs.load"),
        ]
    }

    fn create_strategy(name: &str, config: &Config, host: Host) -> Result<Box<dyn StrategyImpl>> {
        match name {
            "uniform" => Ok(Box::new(Uniform)),
            "owl" => Ok(Box::new(owl::Owl::new(config, host)?)),
            "birdbone" => Ok(Box::new(birdbone::Birdbone::new(config, host)?)),
            _ => Err(unknown_component(name)),
        }
    }
}

birdbone_host_api::export_plugin!(AllocatorsPlugin);
