//! The host's error type: every failure a person can act on, with the context they need. An
//! adapter wraps it beside its own tensor library's errors.

use std::path::PathBuf;

use birdbone_host_api::{ErrorCode, PluginError};

/// Everything that can go wrong in the framework-neutral host.
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
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A file is malformed.
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

/// Returns early with [`Error::Invalid`], converted into the function's error type (so an
/// adapter whose error wraps this one can use it too).
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Invalid(format!($($arg)*)).into())
    };
}

impl Error {
    /// The ABI error code this error answers a plugin with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Plugin { error, .. } => error.code,
            Error::NonFinite { .. } => ErrorCode::NonFinite,
            Error::Io { .. } => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        }
    }

    /// The error as a [`PluginError`], for host callbacks that answer a plugin.
    pub fn to_plugin_error(&self) -> PluginError {
        PluginError::new(self.code(), self.to_string())
    }

    /// A copy for an account kept beside the original (errors are not `Clone`: I/O errors
    /// aren't); what cannot be copied keeps its message.
    pub fn copy(&self) -> Error {
        match self {
            Error::Plugin {
                component,
                param,
                error,
            } => Error::Plugin {
                component: component.clone(),
                param: param.clone(),
                error: error.clone(),
            },
            Error::NonFinite { what, param, index } => Error::NonFinite {
                what,
                param: param.clone(),
                index: *index,
            },
            Error::Config { component, message } => Error::Config {
                component: component.clone(),
                message: message.clone(),
            },
            other => Error::Invalid(other.to_string()),
        }
    }
}
