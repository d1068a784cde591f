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
}

impl LlamaConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &std::path::Path) -> Result<LlamaConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        let c: LlamaConfig = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        c.validate()?;
        Ok(c)
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return Err(Error::Invalid("config: sizes must be positive".into()));
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
        }
    }
}
