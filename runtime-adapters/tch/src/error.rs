//! The adapter's error: the host's, or one of the libraries this adapter runs on.

pub use birdbone_host::Error as HostError;
use birdbone_host_api::{ErrorCode, PluginError};

/// Everything that can go wrong in the tch adapter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure the framework-neutral host describes (plugins, configuration, non-finite
    /// values, shapes, files).
    #[error(transparent)]
    Host(#[from] HostError),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A CUDA kernel or the driver reported an error.
    #[error("CUDA: {0}")]
    Cuda(#[from] birdbone_cuda::CudaError),
}

/// The adapter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error as a [`PluginError`], for host callbacks that answer a plugin.
    pub fn to_plugin_error(&self) -> PluginError {
        let code = match self {
            Error::Host(e) => e.code(),
            Error::Torch(e) if e.to_string().contains("out of memory") => ErrorCode::OutOfMemory,
            Error::Cuda(_) | Error::Torch(_) => ErrorCode::Internal,
        };
        PluginError::new(code, self.to_string())
    }

    /// A copy for an account kept beside the original (libtorch's errors are not `Clone`);
    /// what cannot be copied keeps its message.
    pub fn copy(&self) -> Error {
        match self {
            Error::Host(e) => Error::Host(e.copy()),
            other => Error::Host(HostError::Invalid(other.to_string())),
        }
    }

    /// The host's error inside, if this is one.
    pub fn as_host(&self) -> Option<&HostError> {
        match self {
            Error::Host(e) => Some(e),
            _ => None,
        }
    }
}
