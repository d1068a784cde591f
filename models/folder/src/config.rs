use serde::Deserialize;

use crate::{Error, Result};

fn default_theta() -> f64 {
    10000.0
}
fn default_eps() -> f64 {
    1e-6
}

/// A Hugging Face `config.json` of the Llama family.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    #[serde(default)]
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to hidden / heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Whether the LM head reuses the embeddings.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Longest context.
    #[serde(default)]
    pub max_position_embeddings: Option<usize>,
    /// Mistral's sliding attention window.
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2-style biases on q/k/v.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// Beginning-of-sequence token.
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// How the rotary frequencies are scaled (`rope_parameters` or `rope_scaling`).
    #[serde(skip)]
    pub rope_scaling: RopeScaling,
}

/// Rotary-embedding frequency scaling, as transformers' `rope_type` names it.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    /// Plain RoPE.
    #[default]
    Default,
    /// Positions divided by `factor` (`linear`).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3's: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        /// The divisor of low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are divided.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The context the model was first trained on.
        original_max_position_embeddings: f64,
    },
}

/// Fields the runtime reads and implements (their values are checked).
const IMPLEMENTED: &[&str] = &[
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "rope_scaling",
    "vocab_size",
    "tie_word_embeddings",
    "max_position_embeddings",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "rope_interleaved",
    "bos_token_id",
    "eos_token_id",
];

/// Fields that do not change what the model computes at inference: training settings,
/// bookkeeping, labels.
const INERT: &[&str] = &[
    "architectures",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "initializer_range",
    "use_cache",
    "attention_dropout",
    "pad_token_id",
    "pretraining_tp",
    "_name_or_path",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "id2label",
    "label2id",
    "problem_type",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "tokenizer_class",
];

fn invalid(message: String) -> Error {
    Error::Invalid(format!("config: {message}"))
}

/// A number field of a rope map.
fn rope_number(
    map: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    kind: &str,
) -> Result<f64> {
    map.get(key)
        .and_then(|v| v.as_f64())
        .filter(|x| x.is_finite() && *x > 0.0)
        .ok_or_else(|| {
            invalid(format!(
                "rope type '{kind}' needs a positive number '{key}'"
            ))
        })
}

impl RopeScaling {
    /// From `rope_parameters` (transformers 5) or `rope_scaling` (earlier); the theta it
    /// carries, if any.
    fn from_json(v: &serde_json::Value) -> Result<(RopeScaling, Option<f64>)> {
        let Some(map) = v.as_object() else {
            return Ok((RopeScaling::Default, None));
        };
        let kind = map
            .get("rope_type")
            .or_else(|| map.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let known = [
            "rope_type",
            "type",
            "rope_theta",
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ];
        if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(invalid(format!("rope parameter '{k}' is not implemented")));
        }
        let theta = map.get("rope_theta").and_then(|t| t.as_f64());
        let scaling = match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear {
                factor: rope_number(map, "factor", kind)?,
            },
            "llama3" => RopeScaling::Llama3 {
                factor: rope_number(map, "factor", kind)?,
                low_freq_factor: rope_number(map, "low_freq_factor", kind)?,
                high_freq_factor: rope_number(map, "high_freq_factor", kind)?,
                original_max_position_embeddings: rope_number(
                    map,
                    "original_max_position_embeddings",
                    kind,
                )?,
            },
            other => {
                return Err(invalid(format!(
                    "rope type '{other}' is not implemented (default, linear, llama3)"
                )))
            }
        };
        if let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            ..
        } = scaling
        {
            if high_freq_factor <= low_freq_factor {
                return Err(invalid(
                    "llama3 rope: high_freq_factor must exceed low_freq_factor".into(),
                ));
            }
        }
        Ok((scaling, theta))
    }

    /// The scaled inverse frequencies (transformers' computation, in f64).
    pub fn apply(&self, inv_freq: &mut [f64]) {
        match *self {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old,
            } => {
                let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f64::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }
}

impl LlamaConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &std::path::Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        LlamaConfig::from_json(&v).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// A config from its JSON. Every field is either implemented (its value checked) or known
    /// not to change inference; anything else is an error naming it, so that nothing the model
    /// needs is silently ignored.
    pub fn from_json(v: &serde_json::Value) -> Result<LlamaConfig> {
        let map = v
            .as_object()
            .ok_or_else(|| invalid("not a JSON object".into()))?;
        for key in map.keys() {
            if !IMPLEMENTED.contains(&key.as_str()) && !INERT.contains(&key.as_str()) {
                return Err(invalid(format!(
                    "field '{key}' is not implemented by this runtime"
                )));
            }
        }
        let mut c: LlamaConfig = serde_path_to_error::deserialize(v.clone()).map_err(|e| {
            let field = e.path().to_string();
            invalid(format!("{field}: {}", e.into_inner()))
        })?;
        let get = |k: &str| map.get(k).filter(|x| !x.is_null());
        match c.model_type.as_str() {
            "llama" | "mistral" | "qwen2" => {}
            other => {
                return Err(invalid(format!(
                    "model_type '{other}' is not implemented (llama, mistral, qwen2)"
                )))
            }
        }
        if let Some(act) = get("hidden_act") {
            if act.as_str() != Some("silu") {
                return Err(invalid(format!(
                    "hidden_act {act} is not implemented (silu)"
                )));
            }
        }
        if get("mlp_bias").and_then(|b| b.as_bool()) == Some(true) {
            return Err(invalid("mlp_bias true is not implemented".into()));
        }
        if get("rope_interleaved").and_then(|b| b.as_bool()) == Some(true) {
            return Err(invalid("rope_interleaved true is not implemented".into()));
        }
        if c.model_type != "qwen2" && c.attention_bias == Some(true) {
            return Err(invalid(format!(
                "attention_bias true (biases on q/k/v/o) is not implemented for {}",
                c.model_type
            )));
        }
        if c.model_type == "qwen2" {
            // Qwen2 windows only the layers from max_window_layers on, and only when asked.
            if get("use_sliding_window").and_then(|b| b.as_bool()) == Some(true) {
                return Err(invalid(
                    "qwen2 use_sliding_window true is not implemented".into(),
                ));
            }
            c.sliding_window = None;
        } else if get("use_sliding_window").is_some() || get("max_window_layers").is_some() {
            return Err(invalid(format!(
                "use_sliding_window/max_window_layers are Qwen2 fields, not {}",
                c.model_type
            )));
        }
        if let Some(types) = get("layer_types") {
            let want = if c.sliding_window.is_some() {
                "sliding_attention"
            } else {
                "full_attention"
            };
            let ok = types
                .as_array()
                .is_some_and(|a| a.iter().all(|t| t.as_str() == Some(want)));
            if !ok {
                return Err(invalid(format!(
                    "layer_types {types} is not implemented (every layer '{want}')"
                )));
            }
        }
        let scaling = match (get("rope_parameters"), get("rope_scaling")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "both rope_parameters and rope_scaling are given".into(),
                ))
            }
            (Some(p), None) | (None, Some(p)) => Some(RopeScaling::from_json(p)?),
            (None, None) => None,
        };
        if let Some((scaling, theta)) = scaling {
            if let Some(t) = theta {
                if get("rope_theta").is_some_and(|top| top.as_f64() != Some(t)) {
                    return Err(invalid(
                        "rope_theta differs between the top level and the rope parameters".into(),
                    ));
                }
                c.rope_theta = t;
            }
            c.rope_scaling = scaling;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the numbers fit together and stay inside bounds no real model reaches (past them
    /// a config is corrupt, and building its model would abort on allocation).
    pub fn validate(&self) -> Result<()> {
        let bounded = [
            ("hidden_size", self.hidden_size, 1 << 20),
            ("intermediate_size", self.intermediate_size, 1 << 23),
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("num_attention_heads", self.num_attention_heads, 1 << 12),
            ("num_key_value_heads", self.kv_heads(), 1 << 12),
            ("vocab_size", self.vocab_size, 1 << 24),
        ];
        for (field, v, max) in bounded {
            if v == 0 || v > max {
                return Err(invalid(format!("{field} is {v}: expected 1 to {max}")));
            }
        }
        match self.head_dim {
            Some(d) if d == 0 || d > 1 << 16 || d % 2 != 0 => {
                return Err(invalid(format!(
                    "head_dim is {d}: expected an even number from 2 to 65536"
                )))
            }
            Some(_) => {}
            None if self.hidden_size % self.num_attention_heads != 0
                || (self.hidden_size / self.num_attention_heads) % 2 != 0 =>
            {
                return Err(invalid(format!(
                    "hidden_size {} over {} heads is not an even head width (give head_dim)",
                    self.hidden_size, self.num_attention_heads
                )))
            }
            None => {}
        }
        if self.max_position_embeddings == Some(0) {
            return Err(invalid("max_position_embeddings is 0".into()));
        }
        if self.sliding_window == Some(0) {
            return Err(invalid("sliding_window is 0".into()));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(invalid(format!(
                "rope_theta {} must be positive",
                self.rope_theta
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(invalid(format!(
                "rms_norm_eps {} must be positive",
                self.rms_norm_eps
            )));
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            return Err(Error::Invalid(format!(
                "config: {} query heads are not a multiple of {} key/value heads",
                self.num_attention_heads,
                self.kv_heads()
            )));
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether q/k/v carry biases (Qwen2).
    pub fn qkv_bias(&self) -> bool {
        self.attention_bias.unwrap_or(self.model_type == "qwen2")
    }

    /// The end-of-sequence token ids.
    pub fn eos_ids(&self) -> Vec<i64> {
        match &self.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_i64().into_iter().collect(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_i64()).collect(),
            _ => vec![],
        }
    }

    /// Mistral-7B's shapes (32 layers, hidden 4096, 32/8 heads, MLP 14336, vocabulary 32000,
    /// sliding window 4096), for tests and benchmarks with random weights.
    pub fn mistral_7b() -> LlamaConfig {
        LlamaConfig {
            model_type: "mistral".into(),
            hidden_size: 4096,
            intermediate_size: 14336,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(8),
            head_dim: Some(128),
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            vocab_size: 32000,
            tie_word_embeddings: false,
            max_position_embeddings: Some(32768),
            sliding_window: Some(4096),
            attention_bias: Some(false),
            bos_token_id: None,
            eos_token_id: None,
            rope_scaling: RopeScaling::Default,
        }
    }
}
