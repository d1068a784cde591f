use abi_stable::std_types::RSlice;

use crate::{ConfigEntry, ParamValue, PluginError};

/// A component's configuration, as the host passes it: every declared parameter present and of
/// its declared type.
#[derive(Debug, Clone, Default)]
pub struct Config {
    entries: Vec<(String, ParamValue)>,
}

impl Config {
    /// Reads the entries the host passed.
    pub fn from_entries(entries: RSlice<'_, ConfigEntry>) -> Config {
        Config {
            entries: entries
                .iter()
                .map(|e| (e.name.to_string(), e.value.clone()))
                .collect(),
        }
    }

    /// The raw value of `name`.
    pub fn get(&self, name: &str) -> Option<&ParamValue> {
        self.entries.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    fn missing(name: &str, kind: &str) -> PluginError {
        PluginError::invalid(format!("configuration has no {kind} parameter '{name}'"))
    }

    /// A float parameter (integers are accepted).
    pub fn f64(&self, name: &str) -> Result<f64, PluginError> {
        match self.get(name) {
            Some(ParamValue::Float(v)) => Ok(*v),
            Some(ParamValue::Int(v)) => Ok(*v as f64),
            _ => Err(Self::missing(name, "float")),
        }
    }

    /// An integer parameter.
    pub fn i64(&self, name: &str) -> Result<i64, PluginError> {
        match self.get(name) {
            Some(ParamValue::Int(v)) => Ok(*v),
            _ => Err(Self::missing(name, "integer")),
        }
    }

    /// A boolean parameter.
    pub fn bool(&self, name: &str) -> Result<bool, PluginError> {
        match self.get(name) {
            Some(ParamValue::Bool(v)) => Ok(*v),
            _ => Err(Self::missing(name, "boolean")),
        }
    }

    /// A string parameter.
    pub fn str(&self, name: &str) -> Result<&str, PluginError> {
        match self.get(name) {
            Some(ParamValue::Str(v)) => Ok(v.as_str()),
            _ => Err(Self::missing(name, "string")),
        }
    }
}
