use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::{
    prefix_type::{PrefixTypeTrait, WithMetadata},
    sabi_trait::TD_Opaque,
    std_types::{RBox, RResult, RSlice, RStr},
};

use crate::{
    sdk::{Config, Host, Plan},
    AbiVersion, ComponentInfo, ConfigEntry, ErrorCode, HostOps_Ref, ParamInfo, PlanContextMut,
    PluginError, PluginManifest, PluginModule, PluginModule_Ref, ScoreInputs, ScoreOut,
    ScoreRequest, Scorer, ScorerBox, Scorer_TO, Strategy, StrategyBox, Strategy_TO, Target,
};

/// A scorer, in plain Rust. The SDK adapts it to the ABI and catches its panics.
pub trait ScorerImpl: Send + 'static {
    /// See [`crate::Scorer::score`].
    fn score(
        &mut self,
        param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> Result<ScoreOut, PluginError>;

    /// See [`crate::Scorer::observe`]. The default does nothing.
    fn observe(&mut self, param: &ParamInfo, inputs: &ScoreInputs) -> Result<(), PluginError> {
        let _ = (param, inputs);
        Ok(())
    }
}

/// A strategy, in plain Rust. The SDK adapts it to the ABI and catches its panics.
pub trait StrategyImpl: Send + 'static {
    /// See [`crate::Strategy::select`]. An allocator's select is never called: return an
    /// error saying so.
    fn select(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<(), PluginError>;

    /// See [`crate::Strategy::allocate`] (ABI 1.2; declare the component with
    /// [`crate::ComponentInfo::allocator`]). The default: not an allocator.
    fn allocate(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<Vec<f64>, PluginError> {
        let _ = (plan, target);
        Err(PluginError::unsupported(
            "this component is not an allocator",
        ))
    }
}

/// A plugin: its identity, its components, and how to create them.
pub trait Plugin: 'static {
    /// The plugin's name.
    const NAME: &'static str;
    /// The plugin's version (usually `env!("CARGO_PKG_VERSION")`).
    const VERSION: &'static str;
    /// One line for a person.
    const DESCRIPTION: &'static str;

    /// The components it offers.
    fn components() -> Vec<ComponentInfo>;

    /// Creates scorer `name`. The default knows none.
    fn create_scorer(
        name: &str,
        config: &Config,
        host: Host,
    ) -> Result<Box<dyn ScorerImpl>, PluginError> {
        let _ = (config, host);
        Err(unknown_component(name))
    }

    /// Creates strategy `name`. The default knows none.
    fn create_strategy(
        name: &str,
        config: &Config,
        host: Host,
    ) -> Result<Box<dyn StrategyImpl>, PluginError> {
        let _ = (config, host);
        Err(unknown_component(name))
    }
}

/// The error for a component name the plugin does not offer.
pub fn unknown_component(name: &str) -> PluginError {
    PluginError::invalid(format!("this plugin has no component named '{name}'"))
}

/// Runs `f`, turning a panic into an [`ErrorCode::Panicked`] error that names `what`.
pub fn catch_panics<T>(
    what: &str,
    f: impl FnOnce() -> Result<T, PluginError>,
) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.into(),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            RResult::RErr(PluginError::new(
                ErrorCode::Panicked,
                format!("{what} panicked: {msg}"),
            ))
        }
    }
}

struct ScorerAdapter(Box<dyn ScorerImpl>);

impl Scorer for ScorerAdapter {
    fn score(
        &mut self,
        param: &ParamInfo,
        inputs: &ScoreInputs,
        request: ScoreRequest,
    ) -> RResult<ScoreOut, PluginError> {
        catch_panics("scorer", || self.0.score(param, inputs, request))
    }
    fn observe(&mut self, param: &ParamInfo, inputs: &ScoreInputs) -> RResult<(), PluginError> {
        catch_panics("scorer", || self.0.observe(param, inputs))
    }
}

struct StrategyAdapter(Box<dyn StrategyImpl>);

impl Strategy for StrategyAdapter {
    fn select(&mut self, plan: PlanContextMut<'_>, target: &Target) -> RResult<(), PluginError> {
        catch_panics("strategy", || self.0.select(&mut Plan::new(plan), target))
    }

    fn allocate(
        &mut self,
        plan: PlanContextMut<'_>,
        target: &Target,
    ) -> RResult<abi_stable::std_types::RVec<f64>, PluginError> {
        catch_panics("allocator", || {
            self.0
                .allocate(&mut Plan::new(plan), target)
                .map(Into::into)
        })
    }
}

extern "C" fn manifest<P: Plugin>() -> RResult<PluginManifest, PluginError> {
    catch_panics("plugin manifest", || {
        Ok(PluginManifest {
            name: P::NAME.into(),
            version: P::VERSION.into(),
            description: P::DESCRIPTION.into(),
            abi: AbiVersion::CURRENT,
            components: P::components().into(),
        })
    })
}

extern "C" fn create_scorer<P: Plugin>(
    name: RStr<'_>,
    config: RSlice<'_, ConfigEntry>,
    host: HostOps_Ref,
) -> RResult<ScorerBox, PluginError> {
    catch_panics("scorer constructor", || {
        let inner = P::create_scorer(
            name.as_str(),
            &Config::from_entries(config),
            Host::new(host),
        )?;
        Ok(Scorer_TO::from_ptr(
            RBox::new(ScorerAdapter(inner)),
            TD_Opaque,
        ))
    })
}

extern "C" fn create_strategy<P: Plugin>(
    name: RStr<'_>,
    config: RSlice<'_, ConfigEntry>,
    host: HostOps_Ref,
) -> RResult<StrategyBox, PluginError> {
    catch_panics("strategy constructor", || {
        let inner = P::create_strategy(
            name.as_str(),
            &Config::from_entries(config),
            Host::new(host),
        )?;
        Ok(Strategy_TO::from_ptr(
            RBox::new(StrategyAdapter(inner)),
            TD_Opaque,
        ))
    })
}

/// The root module of plugin `P`, as a value (tests that need a doctored module start here).
pub fn module_for<P: Plugin>() -> PluginModule {
    PluginModule {
        abi: AbiVersion::CURRENT,
        manifest: manifest::<P>,
        create_scorer: create_scorer::<P>,
        create_strategy: create_strategy::<P>,
    }
}

/// The root module of plugin `P`, leaked for the life of the process (libraries are never
/// unloaded). [`crate::export_plugin!`] calls this.
pub fn root_module<P: Plugin>() -> PluginModule_Ref {
    let leaked: &'static WithMetadata<PluginModule> =
        Box::leak(Box::new(WithMetadata::new(module_for::<P>())));
    PluginModule_Ref(leaked.static_as_prefix())
}

#[allow(dead_code)]
fn _assert_prefix_trait() {
    fn takes<T: PrefixTypeTrait>() {}
    takes::<PluginModule>();
}
