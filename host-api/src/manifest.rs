use abi_stable::{
    std_types::{RString, RVec},
    StableAbi,
};

use crate::version::AbiVersion;

/// The type of a component parameter.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `true`/`false`.
    Bool,
    /// A signed integer.
    Int,
    /// A floating-point number.
    Float,
    /// Text.
    Str,
}

/// A parameter value, as given in a component's configuration.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub enum ParamValue {
    /// A [`ParamKind::Bool`] value.
    Bool(bool),
    /// A [`ParamKind::Int`] value.
    Int(i64),
    /// A [`ParamKind::Float`] value.
    Float(f64),
    /// A [`ParamKind::Str`] value.
    Str(RString),
}

impl ParamValue {
    /// The kind of this value.
    pub fn kind(&self) -> ParamKind {
        match self {
            ParamValue::Bool(_) => ParamKind::Bool,
            ParamValue::Int(_) => ParamKind::Int,
            ParamValue::Float(_) => ParamKind::Float,
            ParamValue::Str(_) => ParamKind::Str,
        }
    }
}

impl std::fmt::Display for ParamValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParamValue::Bool(v) => write!(f, "{v}"),
            ParamValue::Int(v) => write!(f, "{v}"),
            ParamValue::Float(v) => write!(f, "{v}"),
            ParamValue::Str(v) => write!(f, "{v}"),
        }
    }
}

/// One parameter a component accepts: enough for the host to validate a configuration and to
/// print help.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ParamSpec {
    /// The key in a configuration.
    pub name: RString,
    /// Its type.
    pub kind: ParamKind,
    /// The value used when the configuration leaves it out.
    pub default: ParamValue,
    /// One line for a person.
    pub doc: RString,
}

/// One `name = value` entry of a component configuration. The host fills in defaults and
/// checks types before a component is created, so a component sees every parameter it declared.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ConfigEntry {
    /// Parameter name.
    pub name: RString,
    /// Its value.
    pub value: ParamValue,
}

/// What a component is.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComponentKind {
    /// Turns weights into importance scores.
    Scorer,
    /// Turns scores into pruning decisions.
    Strategy,
}

/// A set of devices, as bits (`CPU | CUDA`).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceSet(pub u32);

impl DeviceSet {
    /// Host memory.
    pub const CPU: DeviceSet = DeviceSet(1);
    /// CUDA devices.
    pub const CUDA: DeviceSet = DeviceSet(2);
    /// Both.
    pub const ALL: DeviceSet = DeviceSet(3);
    /// Whether every device of `other` is in `self`.
    pub fn contains(self, other: DeviceSet) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The inputs a scorer needs besides the weight, as bits.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InputSet(pub u32);

impl InputSet {
    /// The weight alone.
    pub const NONE: InputSet = InputSet(0);
    /// Per-input-channel sums of squared activations (for Wanda-like scores).
    pub const ACTIVATION_STATS: InputSet = InputSet(1);
    /// The gradient of the loss with respect to the weight.
    pub const GRADIENTS: InputSet = InputSet(2);
    /// `XᵀX` of the Linear's calibration inputs, through [`crate::PlanContext::hessian`]
    /// (ABI 1.1; a strategy asks for it).
    pub const HESSIAN: InputSet = InputSet(4);
    /// The calibration loss with each decoder layer pruned alone at a few sparsities, through
    /// [`crate::PlanContext::load`] (ABI 1.2; an allocator asks for it).
    pub const LOAD: InputSet = InputSet(8);
    /// Whether every input of `other` is in `self`.
    pub fn contains(self, other: InputSet) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn with(self, other: InputSet) -> InputSet {
        InputSet(self.0 | other.0)
    }
}

/// The shape of what a strategy removes (or a scorer can score).
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// Any individual weight.
    Unstructured,
    /// N of every M consecutive weights along the input dimension are kept.
    NM,
    /// Whole output rows.
    Rows,
    /// Whole input columns.
    Columns,
}

/// A set of [`Granularity`] values, as bits (`1 << granularity as u8`).
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GranularitySet(pub u32);

impl GranularitySet {
    /// The set holding just `g`.
    pub const fn of(g: Granularity) -> GranularitySet {
        GranularitySet(1 << g as u32)
    }
    /// Union.
    pub const fn with(self, g: Granularity) -> GranularitySet {
        GranularitySet(self.0 | 1 << g as u32)
    }
    /// Whether `g` is in the set.
    pub fn contains(self, g: Granularity) -> bool {
        self.0 & (1 << g as u32) != 0
    }
    /// The members, in declaration order.
    pub fn members(self) -> Vec<Granularity> {
        [
            Granularity::Unstructured,
            Granularity::NM,
            Granularity::Rows,
            Granularity::Columns,
        ]
        .into_iter()
        .filter(|g| self.contains(*g))
        .collect()
    }
}

/// What a component can do and what it needs.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Capabilities {
    /// Devices whose tensors it handles.
    pub devices: DeviceSet,
    /// Inputs a component needs besides the weight: a scorer's in its [`crate::ScoreInputs`],
    /// a strategy's ([`InputSet::HESSIAN`], from ABI 1.1) through its plan context.
    pub inputs: InputSet,
    /// Whether it keeps state across calls (a training-time scorer that accumulates, say).
    pub stateful: bool,
    /// For a strategy, what it produces; for a scorer, the granularities it can score at.
    pub granularity: GranularitySet,
    /// Host capabilities it requires, from [`crate::HOST_CAPABILITIES`] of the host's version.
    pub requires: RVec<RString>,
}

/// One scorer or strategy a plugin offers.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct ComponentInfo {
    /// Unique among all loaded plugins; what users type (`--scorer magnitude`).
    pub name: RString,
    /// Scorer or strategy.
    pub kind: ComponentKind,
    /// One line for a person.
    pub description: RString,
    /// The parameters its configuration accepts.
    pub params: RVec<ParamSpec>,
    /// What it can do and needs.
    pub capabilities: Capabilities,
}

/// Everything a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginManifest {
    /// The plugin's name.
    pub name: RString,
    /// The plugin's own version (its crate version, say).
    pub version: RString,
    /// One line for a person.
    pub description: RString,
    /// The Birdbone ABI it was built against (the same as [`crate::PluginModule::abi`]).
    pub abi: AbiVersion,
    /// The components it offers.
    pub components: RVec<ComponentInfo>,
}
