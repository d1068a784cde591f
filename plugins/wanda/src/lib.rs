//! Implements host-api's `Scorer` by Wanda's importance (Sun et al., 2023, "A Simple and
//! Effective Pruning Approach for Large Language Models"): `|W_ij| · ‖X_j‖₂`, the weight's
//! magnitude times the L2 norm of its input channel over calibration tokens. The product is
//! fused into the host's selection kernels: only the `[in]` vector of norms is computed here.
//! The paper compares weights within each output row: pair it with `layerwise` `scope=row`.

#![deny(missing_docs)]

use birdbone_host_api::sdk::prelude::*;

struct Wanda {
    host: Host,
}

impl ScorerImpl for Wanda {
    fn score(
        &mut self,
        param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> Result<ScoreOut> {
        if request.granularity != Granularity::Unstructured {
            return Err(PluginError::unsupported("wanda scores single weights only"));
        }
        let Some(sq_sums) = inputs.act_sq_sums.into_option() else {
            return Err(PluginError::new(
                ErrorCode::Unavailable,
                format!("no activation statistics for '{}': run calibration text through the model first", param.name),
            ));
        };
        let cols = *param.shape.last().unwrap_or(&0);
        if sq_sums.dims() != [cols] {
            return Err(PluginError::invalid(format!(
                "statistics of shape {:?} for {cols} input channels",
                sq_sums.dims()
            )));
        }
        // ‖X_j‖₂ = sqrt(Σ x_j²); computed in f32 on the statistics' device.
        // A new tensor either way (the statistics belong to the host); one launch when they are
        // f32 already, as calibration records them.
        let norms = if sq_sums.dtype() == DType::F32 {
            self.host.unary(UnaryOp::Sqrt, sq_sums)?
        } else {
            let n = self.host.cast(sq_sums, DType::F32)?;
            self.host.unary_inplace(UnaryOp::Sqrt, &n)?;
            n
        };
        Ok(ScoreOut::Magnitude {
            column_scale: RSome(norms.into_raw()),
        })
    }
}

/// The plugin.
pub struct WandaPlugin;

impl Plugin for WandaPlugin {
    const NAME: &'static str = "wanda";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "Wanda importance: |W| times input-channel activation norms";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::scorer(
            "wanda",
            "|W_ij| * ||X_j||_2 from calibration activations (pair with layerwise scope=row)",
        )
        .inputs(InputSet::ACTIVATION_STATS)
        .requires("scores.fused-magnitude")]
    }

    fn create_scorer(name: &str, _config: &Config, host: Host) -> Result<Box<dyn ScorerImpl>> {
        match name {
            "wanda" => Ok(Box::new(Wanda { host })),
            _ => Err(unknown_component(name)),
        }
    }
}

birdbone_host_api::export_plugin!(WandaPlugin);
