//! What the training callback is asked for, as a config file can say it: when passes run and
//! to what sparsity, growth-plate protection and regrowth. The same for every adapter; the
//! tch adapter's `train::Compression` carries it out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    filter::ParamFilter,
};

/// How sparsity rises along a gradual schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Curve {
    /// Zhu & Gupta (2017): `s_t = s_f + (s_i − s_f)(1 − (t − t0)/(t1 − t0))³`.
    #[default]
    Cubic,
    /// A straight line from the initial to the final sparsity.
    Linear,
}

/// When passes run and to what sparsity.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// One pass, after step `at_step`.
    OneShot {
        /// The step after which the pass runs.
        at_step: u64,
        /// Its sparsity.
        sparsity: f64,
    },
    /// Passes after steps `start_step`, `start_step + every`, ... up to `end_step`.
    Gradual {
        /// First pass.
        start_step: u64,
        /// Last pass (reaching `final_sparsity`).
        end_step: u64,
        /// Steps between passes.
        every: u64,
        /// Sparsity of the first pass.
        initial_sparsity: f64,
        /// Sparsity of the last.
        final_sparsity: f64,
        /// The curve between them.
        #[serde(default)]
        curve: Curve,
    },
}

impl Schedule {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<()> {
        let ok = |s: f64| (0.0..=1.0).contains(&s);
        match *self {
            Schedule::OneShot { sparsity, .. } if !ok(sparsity) => {
                crate::bail!("sparsity {sparsity} is not in [0, 1]")
            }
            Schedule::Gradual {
                start_step,
                end_step,
                every,
                initial_sparsity,
                final_sparsity,
                ..
            } => {
                if !ok(initial_sparsity) || !ok(final_sparsity) {
                    crate::bail!("sparsities must be in [0, 1]");
                }
                if every == 0 || end_step < start_step || (end_step - start_step) % every != 0 {
                    crate::bail!("a gradual schedule needs every > 0 and end_step - start_step a multiple of it");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The sparsity to reach after step `step`, when a pass runs then.
    pub fn target_at(&self, step: u64) -> Option<f64> {
        let x = self.progress_at(step)?;
        Some(match *self {
            Schedule::OneShot { sparsity, .. } => sparsity,
            Schedule::Gradual {
                initial_sparsity,
                final_sparsity,
                curve,
                ..
            } => initial_sparsity + (final_sparsity - initial_sparsity) * curve.share(x),
        })
    }

    /// How far along the schedule a pass after step `step` is, from 0 (the first pass of a
    /// gradual schedule) to 1 (the last, or the one-shot pass); `None` when no pass runs then.
    pub fn progress_at(&self, step: u64) -> Option<f64> {
        match *self {
            Schedule::OneShot { at_step, .. } => (step == at_step).then_some(1.0),
            Schedule::Gradual {
                start_step,
                end_step,
                every,
                ..
            } => {
                if step < start_step || step > end_step || (step - start_step) % every != 0 {
                    return None;
                }
                if end_step == start_step {
                    return Some(1.0);
                }
                Some((step - start_step) as f64 / (end_step - start_step) as f64)
            }
        }
    }

    /// The sparsity the schedule starts from (0 for a one-shot pass) and ends at.
    pub fn range(&self) -> (f64, f64) {
        match *self {
            Schedule::OneShot { sparsity, .. } => (0.0, sparsity),
            Schedule::Gradual {
                initial_sparsity,
                final_sparsity,
                ..
            } => (initial_sparsity, final_sparsity),
        }
    }

    /// The curve between the ends (a one-shot pass jumps: any curve gives 1 at its pass).
    pub fn curve(&self) -> Curve {
        match *self {
            Schedule::OneShot { .. } => Curve::Linear,
            Schedule::Gradual { curve, .. } => curve,
        }
    }
}

impl Curve {
    /// The share of the way from the initial to the final sparsity covered at progress `x`
    /// (0 to 1).
    pub fn share(self, x: f64) -> f64 {
        let x = x.clamp(0.0, 1.0);
        match self {
            Curve::Cubic => 1.0 - (1.0 - x).powi(3),
            Curve::Linear => x,
        }
    }
}

/// Growth plates over layers (the second design, after row plates under magnitude scores lost
/// to one-shot Wanda): every parameter rises along the schedule to its own final sparsity (the
/// allocation's, when the callback has one), the least load-bearing first and the most
/// load-bearing last; a parameter that has reached it ossifies, and its mask stays as it is for
/// the rest of training while the others go on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerPlateConfig {
    /// The share of the schedule by which the least load-bearing parameter reaches its final
    /// sparsity; the most load-bearing reaches it at the schedule's end, the others in between by
    /// rank. 1 (or no allocation) makes every parameter follow the schedule itself.
    #[serde(default = "default_earliest")]
    pub earliest: f64,
}

fn default_earliest() -> f64 {
    0.5
}

impl Default for LayerPlateConfig {
    fn default() -> Self {
        LayerPlateConfig {
            earliest: default_earliest(),
        }
    }
}

/// Growth plates: rows still growing are kept dense until they settle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrowthPlateConfig {
    /// Weight of the newest step in the moving averages (0.1: about ten steps of memory).
    /// Growth is a row's moving average of ‖ΔW_r‖ and of ‖∇W_r‖, each relative to its
    /// parameter's median row.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// A row grows when its growth is this many times its parameter's median row growth.
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// At most this fraction of a parameter's rows is protected at once (the fastest growing).
    #[serde(default = "default_max_protected")]
    pub max_protected: f64,
    /// Steps of averaging before any row is judged.
    #[serde(default = "default_warmup")]
    pub warmup_steps: u64,
}

fn default_rate() -> f64 {
    0.1
}
fn default_factor() -> f64 {
    2.0
}
fn default_max_protected() -> f64 {
    0.05
}
fn default_warmup() -> u64 {
    4
}

impl Default for GrowthPlateConfig {
    fn default() -> Self {
        GrowthPlateConfig {
            rate: default_rate(),
            factor: default_factor(),
            max_protected: default_max_protected(),
            warmup_steps: default_warmup(),
        }
    }
}

/// RigL-style regrowth at schedule points.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegrowConfig {
    /// Fraction of each parameter's pruned weights regrown (and as many live ones pruned).
    pub fraction: f64,
}

/// Everything the callback does: a recipe's `training` section with its pattern and selection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompressionConfig {
    /// When and how far.
    pub schedule: Schedule,
    /// Which parameters.
    #[serde(default)]
    pub filter: ParamFilter,
    /// An N:M pattern for the `nm` strategy.
    #[serde(default)]
    pub nm: Option<(u32, u32)>,
    /// Growth-plate protection, when wanted.
    #[serde(default)]
    pub growth_plates: Option<GrowthPlateConfig>,
    /// Regrowth at schedule points, when wanted.
    #[serde(default)]
    pub regrow: Option<RegrowConfig>,
    /// Growth plates over layers, when wanted.
    #[serde(default)]
    pub layer_plates: Option<LayerPlateConfig>,
}

impl CompressionConfig {
    /// Reads the `training` section of a recipe file (YAML or JSON, see
    /// [`crate::Recipe::from_file`]), with the recipe's pattern and parameter selection.
    pub fn from_file(path: &std::path::Path) -> Result<CompressionConfig> {
        crate::Recipe::from_file(path)?
            .compression()
            .map_err(|e| Error::Format {
                path: path.into(),
                message: e.to_string(),
            })
    }
}
