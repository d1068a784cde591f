use std::path::PathBuf;

use birdbone_host_api::PluginError;

/// Everything that can go wrong on the host side, with the context a person needs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plugin returned an error (or panicked, which the plugin turned into one).
    #[error("plugin component '{component}' failed on {param}: {error}")]
    Plugin {
        /// The scorer or strategy.
        component: String,
        /// The parameter being worked on, or "the pass" when none.
        param: String,
        /// What the plugin said.
        error: PluginError,
    },
    /// A weight, gradient, statistic or score is NaN or infinite.
    #[error(
        "{what} of parameter '{param}' is not finite (element {index}); the model was not changed"
    )]
    NonFinite {
        /// "weight", "score", ...
        what: &'static str,
        /// The parameter.
        param: String,
        /// A flat index of an offending element, when known.
        index: u64,
    },
    /// A component name no loaded plugin offers.
    #[error("no loaded plugin offers a {kind} named '{name}' (loaded {kind}s: {available})")]
    UnknownComponent {
        /// "scorer" or "strategy".
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// What there is.
        available: String,
    },
    /// A configuration a component cannot take.
    #[error("bad configuration for '{component}': {message}")]
    Config {
        /// The component.
        component: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin file that could not be loaded.
    #[error("cannot load plugin {path}: {reason}")]
    PluginLoad {
        /// The file.
        path: PathBuf,
        /// Why, for a person.
        reason: String,
    },
    /// Shapes, dtypes or devices that do not fit together.
    #[error("{op}: {message}")]
    Shape {
        /// What was being done.
        op: &'static str,
        /// What does not fit.
        message: String,
    },
    /// A request the host cannot serve.
    #[error("{0}")]
    Invalid(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A CUDA kernel or the driver reported an error.
    #[error("CUDA: {0}")]
    Cuda(#[from] birdbone_cuda::CudaError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A safetensors file is malformed.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The host's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns early with [`Error::Invalid`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)))
    };
}

impl Error {
    /// The error as a [`PluginError`], for host callbacks that answer a plugin.
    pub fn to_plugin_error(&self) -> PluginError {
        use birdbone_host_api::ErrorCode;
        let code = match self {
            Error::Plugin { error, .. } => error.code,
            Error::NonFinite { .. } => ErrorCode::NonFinite,
            Error::Torch(e) if e.to_string().contains("out of memory") => ErrorCode::OutOfMemory,
            Error::Cuda(_) | Error::Torch(_) | Error::Io { .. } => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        };
        PluginError::new(code, self.to_string())
    }
}
