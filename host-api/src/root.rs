use abi_stable::{
    library::RootModule,
    sabi_types::VersionStrings,
    std_types::{RResult, RSlice, RStr},
    StableAbi,
};

use crate::{
    component::{ScorerBox, StrategyBox},
    error::PluginError,
    manifest::{ConfigEntry, PluginManifest},
    ops::HostOps_Ref,
    version::AbiVersion,
};

/// abi_stable's name for Birdbone plugin libraries.
pub const PLUGIN_BASE_NAME: &str = "birdbone_plugin";

/// The root module every Birdbone plugin exports (through [`crate::export_plugin!`]).
///
/// Every function catches panics inside the plugin and returns them as
/// [`crate::ErrorCode::Panicked`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    /// The Birdbone ABI the plugin was built against. The host reads it first and refuses the
    /// plugin unless it can host that version ([`AbiVersion::can_host`]).
    pub abi: AbiVersion,
    /// Describes the plugin and its components. Called once, at load.
    pub manifest: extern "C" fn() -> RResult<PluginManifest, PluginError>,
    /// Creates the scorer `name` from a configuration the host has completed and type-checked
    /// against the component's [`crate::ParamSpec`]s; rejects values it cannot work with
    /// (with `InvalidArgument`). `host` stays valid for the life of the process.
    pub create_scorer: extern "C" fn(
        name: RStr<'_>,
        config: RSlice<'_, ConfigEntry>,
        host: HostOps_Ref,
    ) -> RResult<ScorerBox, PluginError>,
    /// Creates the strategy `name`, as `create_scorer` does.
    ///
    /// This is the last field of ABI 1.0; fields added in later minors go below it.
    #[sabi(last_prefix_field)]
    pub create_strategy: extern "C" fn(
        name: RStr<'_>,
        config: RSlice<'_, ConfigEntry>,
        host: HostOps_Ref,
    ) -> RResult<StrategyBox, PluginError>,
}

impl RootModule for PluginModule_Ref {
    abi_stable::declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = PLUGIN_BASE_NAME;
    const NAME: &'static str = "Birdbone plugin";
    // Pinned to the ABI major: abi_stable then refuses another major outright, and the minor is
    // checked by Birdbone itself with the rule documented on `AbiVersion::can_host`.
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_strings_follow_the_abi_major() {
        let v = PluginModule_Ref::VERSION_STRINGS.parsed().unwrap();
        assert_eq!(v.major, crate::ABI_MAJOR);
    }
}
