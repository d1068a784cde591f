//! CUDA kernels for Birdbone's exact selections.

/// A CUDA failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CudaError(pub String);
