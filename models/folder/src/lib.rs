//! The files of a Hugging Face model folder, parsed and checked before any tensor library sees
//! them: `config.json` ([`LlamaConfig`]), safetensors headers ([`parse_header`]) and the shard
//! index ([`parse_index`], [`shard_files`]). Every size is checked against the file and against
//! bounds no real model reaches, so a crafted file is an error naming the field, never a panic
//! or an allocation that aborts.

mod config;
mod safetensors_files;
mod tokenizer_file;

pub use config::{LlamaConfig, RopeScaling};
pub use safetensors_files::{
    parse_header, parse_index, read_header, shard_files, TensorEntry, INDEX_FILE, SINGLE_FILE,
};
pub use tokenizer_file::{load_tokenizer, tokenizer_from_bytes};

/// What can be wrong with a model folder's files.
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
    /// A config whose values do not fit.
    #[error("{0}")]
    Invalid(String),
    /// A checkpoint file or index is malformed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
