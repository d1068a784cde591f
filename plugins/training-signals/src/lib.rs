//! Implements host-api's `Scorer` with importance signals gathered during fine-tuning, each
//! accumulated over the steps a training loop reports through `observe` (after backward):
//!
//! - `taylor`: Σ |W ⊙ ∇W|, the first-order Taylor estimate of the loss change when a weight is
//!   removed (Molchanov et al., 2019);
//! - `movement`: −Σ W ⊙ ∇W, movement pruning (Sanh et al., 2020): weights moving towards zero score
//!   low, whatever their size;
//! - `fisher`: Σ (∇W)², the empirical Fisher information.
//!
//! The accumulators live in the scorer instance, one tensor per parameter on the weight's
//! device, created through the host's operations; a score call without any observation falls
//! back to the current gradient.

#![deny(missing_docs)]

use std::collections::HashMap;

use birdbone_host_api::sdk::prelude::*;

#[derive(Clone, Copy, PartialEq)]
enum Signal {
    Taylor,
    Movement,
    Fisher,
}

struct Accumulating {
    host: Host,
    signal: Signal,
    /// Per parameter name: the running sum.
    sums: HashMap<String, OwnedTensor>,
}

impl Accumulating {
    /// This step's term of the signal, as a new f32 tensor of the weight's shape.
    fn term(&self, inputs: &ScoreInputs) -> Result<OwnedTensor> {
        let Some(grad) = inputs.grad.into_option() else {
            return Err(PluginError::new(
                ErrorCode::Unavailable,
                "no gradient: call the training callback after backward",
            ));
        };
        let h = self.host;
        let g = h.cast(grad, DType::F32)?;
        Ok(match self.signal {
            Signal::Fisher => h.unary(UnaryOp::Square, &g)?,
            Signal::Taylor => {
                let w = h.cast(inputs.weight, DType::F32)?;
                let wg = h.mul(&w, &g)?;
                h.unary_inplace(UnaryOp::Abs, &wg)?;
                wg
            }
            Signal::Movement => {
                let w = h.cast(inputs.weight, DType::F32)?;
                let wg = h.mul(&w, &g)?;
                h.unary_inplace(UnaryOp::Neg, &wg)?;
                wg
            }
        })
    }
}

impl ScorerImpl for Accumulating {
    fn observe(&mut self, param: &ParamInfo, inputs: &ScoreInputs) -> Result<()> {
        let term = self.term(inputs)?;
        match self.sums.get(param.name.as_str()) {
            Some(acc) => self.host.binary_inplace(BinaryOp::Add, acc, &term)?,
            None => {
                self.sums.insert(param.name.to_string(), term);
            }
        }
        Ok(())
    }

    fn score(
        &mut self,
        param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> Result<ScoreOut> {
        if request.granularity != Granularity::Unstructured {
            return Err(PluginError::unsupported(
                "training-signal scorers score single weights",
            ));
        }
        let scores = match self.sums.get(param.name.as_str()) {
            // A copy: the host takes ownership of what it is given, and the sum goes on.
            Some(acc) => self.host.cast(acc, DType::F32)?,
            None => self.term(inputs)?,
        };
        Ok(ScoreOut::Dense {
            scores: scores.into_raw(),
        })
    }
}

/// The plugin.
pub struct TrainingSignalsPlugin;

impl Plugin for TrainingSignalsPlugin {
    const NAME: &'static str = "training-signals";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "Taylor, movement and Fisher importance accumulated over training steps";

    fn components() -> Vec<ComponentInfo> {
        let c = |name: &str, doc: &str| {
            ComponentInfo::scorer(name, doc)
                .inputs(InputSet::GRADIENTS)
                .stateful()
        };
        vec![
            c(
                "taylor",
                "sum over steps of |W * dL/dW| (first-order Taylor)",
            ),
            c(
                "movement",
                "minus the sum over steps of W * dL/dW (movement pruning)",
            ),
            c("fisher", "sum over steps of (dL/dW)^2 (empirical Fisher)"),
        ]
    }

    fn create_scorer(name: &str, _config: &Config, host: Host) -> Result<Box<dyn ScorerImpl>> {
        let signal = match name {
            "taylor" => Signal::Taylor,
            "movement" => Signal::Movement,
            "fisher" => Signal::Fisher,
            _ => return Err(unknown_component(name)),
        };
        Ok(Box::new(Accumulating {
            host,
            signal,
            sums: HashMap::new(),
        }))
    }
}

birdbone_host_api::export_plugin!(TrainingSignalsPlugin);
