use abi_stable::{std_types::RString, StableAbi};

/// What went wrong, as a small closed set (Triton-style). The message says the rest.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A configuration value, a tensor shape or dtype, or an id that is not acceptable.
    InvalidArgument,
    /// This component or host can never do what was asked (a device, a dtype, a granularity).
    Unsupported,
    /// Not possible *now* but possibly later (a device is busy or missing); retrying may help.
    Unavailable,
    /// A weight, gradient, statistic or score is NaN or infinite.
    NonFinite,
    /// An allocation failed.
    OutOfMemory,
    /// A bug or an unexpected failure in the plugin or the host.
    Internal,
    /// The plugin panicked; the panic was caught before it crossed the boundary.
    Panicked,
}

/// The error value of every call across the boundary. Owned by whoever receives it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: RString,
}

impl PluginError {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PluginError {
            code,
            message: RString::from(message.into()),
        }
    }
    /// [`ErrorCode::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    /// [`ErrorCode::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unsupported, message)
    }
    /// [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// [`ErrorCode::NonFinite`].
    pub fn non_finite(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NonFinite, message)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl std::error::Error for PluginError {}
