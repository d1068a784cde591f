//! Implements host-api's `Strategy` with one threshold over all selected parameters: exactly
//! `round(sparsity × total)` weights are pruned, wherever they are.

#![deny(missing_docs)]

use birdbone_host_api::sdk::prelude::*;

struct Global;

impl StrategyImpl for Global {
    fn select(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<()> {
        let all = plan.all();
        if let Some(p) = all.iter().find(|&&p| plan.allocated(p).is_some()) {
            return Err(PluginError::invalid(format!(
                "the pass has an allocation ('{}' has its own count), but one global threshold sets every parameter's count itself: use the layerwise strategy with an allocator",
                plan.params()[*p as usize].name
            )));
        }
        let total: u64 = plan.params().iter().map(|p| p.numel).sum();
        let k = exact_count(target.sparsity, total);
        let sel = plan.select_k_smallest(&all, &[k], SelectScope::Global)?;
        for p in all {
            plan.decide(
                p,
                Decision::Apply {
                    selection: sel[0].id,
                },
            )?;
        }
        Ok(())
    }
}

/// The plugin.
pub struct GlobalPlugin;

impl Plugin for GlobalPlugin {
    const NAME: &'static str = "global";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "One exact threshold over all selected parameters";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::strategy(
            "global",
            "prune the lowest-scoring round(s x n) weights of all parameters together",
        )
        .requires("select.exact")]
    }

    fn create_strategy(name: &str, _config: &Config, _host: Host) -> Result<Box<dyn StrategyImpl>> {
        match name {
            "global" => Ok(Box::new(Global)),
            _ => Err(unknown_component(name)),
        }
    }
}

birdbone_host_api::export_plugin!(GlobalPlugin);
