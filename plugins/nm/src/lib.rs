//! Implements host-api's `Strategy` with N:M semi-structured sparsity: in every group of M
//! consecutive weights along the input dimension, the N highest-scoring are kept (2:4 keeps 2
//! of 4, the pattern sparse tensor cores run). Among equal scores the lower index is pruned.

#![deny(missing_docs)]

use birdbone_host_api::sdk::prelude::*;

struct Nm {
    pattern: NmPattern,
}

impl StrategyImpl for Nm {
    fn select(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<()> {
        // A pattern given for the pass (`--pattern 2:4`) wins over the configured one.
        let pattern = target.nm.into_option().unwrap_or(self.pattern);
        check(pattern)?;
        for p in plan.params().to_vec() {
            let cols = *p.shape.last().unwrap_or(&0);
            if cols % pattern.m as i64 != 0 {
                return Err(PluginError::invalid(format!(
                    "'{}' has rows of {cols}, which groups of {} do not divide",
                    p.name, pattern.m
                )));
            }
            plan.decide(p.index, Decision::NM { pattern })?;
        }
        Ok(())
    }
}

fn check(p: NmPattern) -> Result<()> {
    if p.m == 0 || p.m > 32 || p.n > p.m {
        return Err(PluginError::invalid(format!(
            "{}:{} is not an N:M pattern (need 0 <= N <= M <= 32, M >= 1)",
            p.n, p.m
        )));
    }
    Ok(())
}

/// The plugin.
pub struct NmPlugin;

impl Plugin for NmPlugin {
    const NAME: &'static str = "nm";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "N:M semi-structured sparsity (2:4, 4:8, ...)";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::strategy(
            "nm",
            "keep the N highest-scoring of every M consecutive weights along the input dimension",
        )
        .param("n", ParamValue::Int(2), "weights kept per group")
        .param("m", ParamValue::Int(4), "group size (at most 32)")
        .granularity(GranularitySet::of(Granularity::NM))
        .requires("decide.nm")]
    }

    fn create_strategy(name: &str, config: &Config, _host: Host) -> Result<Box<dyn StrategyImpl>> {
        if name != "nm" {
            return Err(unknown_component(name));
        }
        let (n, m) = (config.i64("n")?, config.i64("m")?);
        if !(0..=32).contains(&n) || !(1..=32).contains(&m) {
            return Err(PluginError::invalid(format!("{n}:{m} is out of range")));
        }
        let pattern = NmPattern {
            n: n as u32,
            m: m as u32,
        };
        check(pattern)?;
        Ok(Box::new(Nm { pattern }))
    }
}

birdbone_host_api::export_plugin!(NmPlugin);
