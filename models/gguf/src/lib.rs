//! GGUF checkpoints: reading them ([`GgufFile`]) and importing Llama-family ones into the
//! Hugging Face layout ([`import_llama`]).

mod file;
mod import;
mod kquant;
mod quant;
mod tokenizer;

pub use file::{GgmlType, GgufFile, TensorInfo, Value};
pub use import::{
    convert_tensor, import_llama, import_llama_with, plan_import, ImportPlan, ImportSummary,
};
pub use tokenizer::tokenizer_json;

/// What can go wrong reading or importing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not GGUF, is truncated, or is inconsistent.
    #[error("{path}: {message}")]
    Malformed {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the offset where it helps.
        message: String,
    },
    /// A tensor type or architecture this importer does not handle.
    #[error("{0}")]
    Unsupported(String),
    /// Writing the output failed.
    #[error("{0}")]
    Output(String),
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
