//! Implements host-api's `Strategy` with the same sparsity in every parameter (`scope=tensor`)
//! or in every output row of every parameter (`scope=row`, as Wanda prunes), exactly
//! `round(sparsity × n)` per scope, or under an allocator its exact count for each parameter
//! (split over the rows for `scope=row`).

#![deny(missing_docs)]

use birdbone_host_api::sdk::prelude::*;

#[derive(Clone, Copy)]
enum Scope {
    Tensor,
    Row,
}

struct Layerwise {
    scope: Scope,
}

impl StrategyImpl for Layerwise {
    fn select(&mut self, plan: &mut Plan<'_>, _target: &Target) -> Result<()> {
        let all = plan.all();
        // The host counts: an allocation's exact counts when the pass has one (per row: split
        // over the rows, the first rows one more), else round(s · n) per parameter or per row.
        let scope = match self.scope {
            Scope::Tensor => SelectScope::PerParam,
            Scope::Row => {
                for p in plan.params() {
                    if p.shape.len() != 2 {
                        return Err(PluginError::invalid(format!(
                            "scope=row needs 2-D parameters; '{}' is {:?}",
                            p.name,
                            p.shape.as_slice()
                        )));
                    }
                }
                SelectScope::PerRow
            }
        };
        let sels = plan.select_allocated(&all, scope)?;
        for (p, s) in all.into_iter().zip(sels) {
            plan.decide(p, Decision::Apply { selection: s.id })?;
        }
        Ok(())
    }
}

/// The plugin.
pub struct LayerwisePlugin;

impl Plugin for LayerwisePlugin {
    const NAME: &'static str = "layerwise";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "The same exact sparsity in every parameter, or in every row";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::strategy("layerwise", "prune round(s x n) weights of each parameter (scope=tensor) or of each output row (scope=row)")
            .param("scope", ParamValue::Str("tensor".into()), "'tensor': the sparsity in each parameter; 'row': in each output row (Wanda's comparison group)")
            .requires("select.exact")
            .requires("select.allocated")]
    }

    fn create_strategy(name: &str, config: &Config, _host: Host) -> Result<Box<dyn StrategyImpl>> {
        if name != "layerwise" {
            return Err(unknown_component(name));
        }
        let scope = match config.str("scope")? {
            "tensor" => Scope::Tensor,
            "row" => Scope::Row,
            other => {
                return Err(PluginError::invalid(format!(
                    "scope must be 'tensor' or 'row', got '{other}'"
                )))
            }
        };
        Ok(Box::new(Layerwise { scope }))
    }
}

birdbone_host_api::export_plugin!(LayerwisePlugin);
