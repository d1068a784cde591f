//! A Llama-family decoder on tch, so Birdbone has a real model to serve and to measure.
//!
//! - [`LlamaConfig`] mirrors a Hugging Face `config.json` (Llama, Mistral's sliding window,
//!   Qwen2's q/k/v bias, tied or untied embeddings).
//! - [`Llama`] holds the weights in a `tch::nn::VarStore` under the checkpoint's own names, so
//!   Birdbone's pruner (which takes any `ParamSource`) prunes it in place while it serves.
//! - [`Llama::forward`] runs RMSNorm, rotary embeddings, grouped-query attention and SwiGLU, with
//!   an optional KV cache for generation and an optional [`StatsRecorder`] that sums the squared
//!   inputs of every Linear (what Wanda needs) without keeping activations.
//! - [`perplexity`] is the evaluation protocol; [`collect_stats`] and
//!   [`for_each_block_sequential`] are calibration, one-pass and block by block (the caller
//!   prunes each block as it comes).
//! - [`checkpoint`] reads and writes Hugging Face-style safetensors checkpoints.
//!
//! The crate knows nothing of pruning: statistics come out as plain tensors by name.

mod calib;
pub mod checkpoint;
mod eval;
mod generate;
mod layer_load;
mod load;
mod model;
mod text;

pub use birdbone_model_folder::{LlamaConfig, RopeScaling};
pub use calib::{
    calibrate, collect_stats, collect_stats_with, for_each_block_calibrated,
    for_each_block_sequential, ActivationSums, Calibrated, CalibrationReport,
};
pub use eval::{
    lm_loss, lm_loss_with, perplexity, perplexity_with, token_windows, EvalConfig, Perplexity,
};
pub use generate::generate_greedy;
pub use layer_load::{layer_load, load_by_param, LayerLoad, LoadByParam};
pub use load::{hub_cache_dir, is_hub_id, parse_device, resolve_model_dir, Loaded};
pub use model::{HessianSums, KvCache, Llama, StatsRecorder};
pub use text::{read_text, text_dir};

/// What can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A config, checkpoint or tokenizer that does not fit.
    #[error("{0}")]
    Invalid(String),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A checkpoint file is malformed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

impl From<birdbone_model_folder::Error> for Error {
    fn from(e: birdbone_model_folder::Error) -> Error {
        use birdbone_model_folder::Error as F;
        match e {
            F::Io { path, source } => Error::Io { path, source },
            F::Invalid(m) => Error::Invalid(m),
            F::Format { path, message } => Error::Format { path, message },
        }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
