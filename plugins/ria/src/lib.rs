//! Implements host-api's `Scorer` by RIA, Relative Importance and Activations (Zhang et al., ICLR
//! 2024, "Plug-and-Play: An Efficient Post-training Pruning Method for Large Language Models"):
//!
//! `score[i][j] = (|W_ij| / Σ_i |W_ij| + |W_ij| / Σ_j |W_ij|) · ‖X_j‖₂^a`
//!
//! the weight's share of its input column plus its share of its output row, times the input
//! channel's activation norm to the power `a` (0.5, the paper's). Pair it with `layerwise`
//! `scope=row` (each output row compared on its own, as this project's quality table does) or
//! with `nm`. Without the paper's channel permutation. A row or column of zeros scores 0 (its
//! sums are taken as at least the smallest normal f32, where the reference divides by zero).

#![deny(missing_docs)]

use birdbone_host_api::sdk::prelude::*;

struct Ria {
    host: Host,
    a: f64,
}

impl Ria {
    /// `‖X_j‖₂^a = (Σ x_j²)^(a/2)`: two square roots for the paper's 0.5 (as PyTorch computes
    /// `sqrt(x) ** 0.5`), `exp(a/2 · ln)` otherwise.
    fn column_factor(&self, sq_sums: &Tensor) -> Result<OwnedTensor> {
        let h = self.host;
        let x = h.cast(sq_sums, DType::F32)?;
        if self.a == 0.5 {
            h.unary_inplace(UnaryOp::Sqrt, &x)?;
            h.unary_inplace(UnaryOp::Sqrt, &x)?;
        } else {
            h.unary_inplace(UnaryOp::Log, &x)?;
            h.scalar_inplace(BinaryOp::Mul, &x, self.a / 2.0)?;
            h.unary_inplace(UnaryOp::Exp, &x)?;
        }
        Ok(x)
    }
}

impl ScorerImpl for Ria {
    fn score(
        &mut self,
        param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> Result<ScoreOut> {
        if request.granularity != Granularity::Unstructured {
            return Err(PluginError::unsupported("ria scores single weights only"));
        }
        if param.shape.len() != 2 {
            return Err(PluginError::invalid(format!(
                "ria scores Linear weights; '{}' is {:?}",
                param.name,
                param.shape.as_slice()
            )));
        }
        let Some(sq_sums) = inputs.act_sq_sums.into_option() else {
            return Err(PluginError::new(
                ErrorCode::Unavailable,
                format!("no activation statistics for '{}': run calibration text through the model first", param.name),
            ));
        };
        if sq_sums.dims() != [param.shape[1]] {
            return Err(PluginError::invalid(format!(
                "statistics of shape {:?} for {} input channels",
                sq_sums.dims(),
                param.shape[1]
            )));
        }
        let h = self.host;
        let abs = h.cast(inputs.weight, DType::F32)?;
        h.unary_inplace(UnaryOp::Abs, &abs)?;
        let share = |dim: i64| -> Result<OwnedTensor> {
            let sum = h.reduce(ReduceOp::Sum, &abs, Some(dim), true)?;
            h.scalar_inplace(BinaryOp::Max, &sum, f32::MIN_POSITIVE as f64)?;
            h.binary(BinaryOp::Div, &abs, &sum)
        };
        let scores = share(0)?;
        h.binary_inplace(BinaryOp::Add, &scores, &share(1)?)?;
        h.binary_inplace(BinaryOp::Mul, &scores, &self.column_factor(&sq_sums)?)?;
        Ok(ScoreOut::Dense {
            scores: scores.into_raw(),
        })
    }
}

/// The plugin.
pub struct RiaPlugin;

impl Plugin for RiaPlugin {
    const NAME: &'static str = "ria";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "RIA: relative importance (row and column shares of |W|) times activation norms";

    fn components() -> Vec<ComponentInfo> {
        vec![ComponentInfo::scorer(
            "ria",
            "(|W|/column sum + |W|/row sum) * ||X_j||_2^a from calibration activations (pair with layerwise scope=row or nm)",
        )
        .param("a", ParamValue::Float(0.5), "the power of the activation norm (the paper's 0.5)")
        .inputs(InputSet::ACTIVATION_STATS)]
    }

    fn create_scorer(name: &str, config: &Config, host: Host) -> Result<Box<dyn ScorerImpl>> {
        if name != "ria" {
            return Err(unknown_component(name));
        }
        let a = config.f64("a")?;
        if !a.is_finite() {
            return Err(PluginError::invalid(format!("a must be finite, got {a}")));
        }
        Ok(Box::new(Ria { host, a }))
    }
}

birdbone_host_api::export_plugin!(RiaPlugin);
