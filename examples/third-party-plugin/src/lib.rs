//! Implements host-api's `Scorer` by *relative* magnitude: each weight's magnitude divided by
//! the L2 norm of its output row, so rows of very different scale compete fairly in a global
//! selection. Everything runs through the host's operations, on whatever device the weights are.

use birdbone_host_api::sdk::prelude::*;

struct RelativeMagnitude {
    host: Host,
    eps: f64,
}

impl ScorerImpl for RelativeMagnitude {
    fn score(&mut self, _param: &ParamInfo, inputs: &ScoreInputs, request: ScoreRequest) -> Result<ScoreOut> {
        if request.granularity != Granularity::Unstructured {
            return Err(PluginError::unsupported("relative-magnitude scores single weights only"));
        }
        let h = self.host;
        let w = h.cast(inputs.weight, DType::F32)?;
        let abs = h.abs(&w)?;
        let row_norms = h.reduce(ReduceOp::L2Norm, &w, Some(1), true)?;
        h.scalar_inplace(BinaryOp::Add, &row_norms, self.eps)?;
        let scores = h.binary(BinaryOp::Div, &abs, &row_norms)?;
        Ok(ScoreOut::Dense { scores: scores.into_raw() })
    }
}

/// The plugin.
pub struct RelativeMagnitudePlugin;

impl Plugin for RelativeMagnitudePlugin {
    const NAME: &'static str = "relative-magnitude";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "An example third-party scorer: |W_ij| / ||W_i||";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::scorer("relative-magnitude", "|W_ij| divided by the L2 norm of row i")
            .param("eps", ParamValue::Float(1e-12), "added to each row norm")]
    }

    fn create_scorer(name: &str, config: &Config, host: Host) -> Result<Box<dyn ScorerImpl>> {
        match name {
            "relative-magnitude" => Ok(Box::new(RelativeMagnitude { host, eps: config.f64("eps")? })),
            _ => Err(unknown_component(name)),
        }
    }
}

birdbone_host_api::export_plugin!(RelativeMagnitudePlugin);
