//! Builders for the manifest types, so a plugin describes itself in a few lines.

use abi_stable::std_types::{RString, RVec};

use crate::{
    Capabilities, ComponentInfo, ComponentKind, DeviceSet, Granularity, GranularitySet, InputSet,
    ParamKind, ParamSpec, ParamValue,
};

impl ComponentInfo {
    fn new(kind: ComponentKind, name: &str, description: &str) -> ComponentInfo {
        ComponentInfo {
            name: name.into(),
            kind,
            description: description.into(),
            params: RVec::new(),
            capabilities: Capabilities {
                devices: DeviceSet::ALL,
                inputs: InputSet::NONE,
                stateful: false,
                granularity: GranularitySet::of(Granularity::Unstructured),
                requires: RVec::from(vec![RString::from("ops.v1")]),
            },
        }
    }

    /// A scorer on every device, needing nothing but the weight, scoring single weights.
    pub fn scorer(name: &str, description: &str) -> ComponentInfo {
        Self::new(ComponentKind::Scorer, name, description)
    }

    /// A strategy on every device producing unstructured sparsity.
    pub fn strategy(name: &str, description: &str) -> ComponentInfo {
        Self::new(ComponentKind::Strategy, name, description)
    }

    /// An allocator (ABI 1.2): a strategy-kind component that answers
    /// [`crate::Strategy::allocate`], marked by requiring `plan.allocate`.
    pub fn allocator(name: &str, description: &str) -> ComponentInfo {
        Self::new(ComponentKind::Strategy, name, description).requires("plan.allocate")
    }

    /// Whether this component is an allocator (requires `plan.allocate`).
    pub fn is_allocator(&self) -> bool {
        self.capabilities
            .requires
            .iter()
            .any(|c| c.as_str() == "plan.allocate")
    }

    /// Adds a parameter.
    pub fn param(mut self, name: &str, default: ParamValue, doc: &str) -> ComponentInfo {
        let kind: ParamKind = default.kind();
        self.params.push(ParamSpec {
            name: name.into(),
            kind,
            default,
            doc: doc.into(),
        });
        self
    }

    /// Sets the devices.
    pub fn devices(mut self, devices: DeviceSet) -> ComponentInfo {
        self.capabilities.devices = devices;
        self
    }

    /// Sets the inputs a scorer needs.
    pub fn inputs(mut self, inputs: InputSet) -> ComponentInfo {
        self.capabilities.inputs = inputs;
        self
    }

    /// Marks the component as keeping state across calls.
    pub fn stateful(mut self) -> ComponentInfo {
        self.capabilities.stateful = true;
        self
    }

    /// Sets the granularities.
    pub fn granularity(mut self, granularity: GranularitySet) -> ComponentInfo {
        self.capabilities.granularity = granularity;
        self
    }

    /// Adds a required host capability (see [`crate::HOST_CAPABILITIES`]).
    pub fn requires(mut self, capability: &str) -> ComponentInfo {
        self.capabilities.requires.push(capability.into());
        self
    }
}
