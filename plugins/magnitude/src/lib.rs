//! Implements host-api's `Scorer` by weight magnitude: `|W|` per weight (fused into the host's
//! selection kernels, so no score tensor is ever made), or the L2 norm of each row or column
//! when a strategy asks for structured scores.

#![deny(missing_docs)]

use birdbone_host_api::sdk::prelude::*;

struct Magnitude {
    host: Host,
}

impl ScorerImpl for Magnitude {
    fn score(
        &mut self,
        _param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> Result<ScoreOut> {
        let dim = match request.granularity {
            Granularity::Unstructured => {
                return Ok(ScoreOut::Magnitude {
                    column_scale: RNone,
                })
            }
            Granularity::Rows => 1,
            Granularity::Columns => 0,
            Granularity::NM => {
                return Err(PluginError::unsupported(
                    "N:M is a strategy's pattern, not a score granularity",
                ))
            }
        };
        let norms = self
            .host
            .reduce(ReduceOp::L2Norm, inputs.weight, Some(dim), false)?;
        Ok(ScoreOut::Dense {
            scores: norms.into_raw(),
        })
    }
}

/// The plugin.
pub struct MagnitudePlugin;

impl Plugin for MagnitudePlugin {
    const NAME: &'static str = "magnitude";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Weight-magnitude importance scores";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::scorer(
            "magnitude",
            "|W| per weight; L2 norm per row or column for structured strategies",
        )
        .granularity(
            GranularitySet::of(Granularity::Unstructured)
                .with(Granularity::Rows)
                .with(Granularity::Columns),
        )
        .requires("scores.fused-magnitude")]
    }

    fn create_scorer(name: &str, _config: &Config, host: Host) -> Result<Box<dyn ScorerImpl>> {
        match name {
            "magnitude" => Ok(Box::new(Magnitude { host })),
            _ => Err(unknown_component(name)),
        }
    }
}

birdbone_host_api::export_plugin!(MagnitudePlugin);
