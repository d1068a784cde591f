//! The stable ABI between a Birdbone host and its plugins.
//!
//! A plugin is a `cdylib` that exports one [`PluginModule`] through abi_stable. It offers
//! *components*: [`Scorer`]s, which turn a weight (and, when they ask, its gradient or the
//! activation statistics of its input) into importance scores, and [`Strategy`]s, which turn
//! scores into pruning decisions. Plugins never link libtorch: tensors cross the boundary as
//! DLPack-shaped [`TensorView`]s, and every computation on them goes through the host's
//! [`HostOps`] table, so a plugin runs on CPU and CUDA tensors alike.
//!
//! Plugin authors should start at [`sdk`]: it wraps everything here in safe Rust, catches
//! panics, and exports the module with one macro.
//!
//! # Versioning: two layers
//!
//! 1. **abi_stable's layout check.** When a host loads a plugin, abi_stable compares the type
//!    layout of [`PluginModule`] (and everything reachable from it) with the host's and refuses a
//!    plugin whose layout differs. Its version string is pinned to `"<ABI_MAJOR>.0.0"`, so it also
//!    refuses a plugin of another major version before reading anything from it.
//! 2. **Birdbone's own version and capabilities.** [`PluginModule::abi`] carries the
//!    [`AbiVersion`] the plugin was built against. The rule is Triton's: the majors must be equal
//!    and the host's minor must be at least the plugin's. Each component also lists the host
//!    capabilities it requires ([`Capabilities::requires`]); the host refuses a component that
//!    asks for one it does not have, with a message naming it.
//!
//! # What may change in a minor version
//!
//! Mirroring abi_stable's library-evolution rules:
//! - prefix types ([`PluginModule`], [`HostOps`]) and `#[sabi_trait]` traits ([`Scorer`],
//!   [`Strategy`], [`PlanContext`]) may gain fields or methods **at the end only**; the
//!   `#[sabi(last_prefix_field)]` attribute stays where it is until the next major version;
//!   a field added later is read through an `Option` getter, so check for it before use;
//! - exhaustive enums ([`DType`], [`ErrorCode`], [`Decision`], ...) never gain variants; a new
//!   variant needs a new major version or a new method;
//! - field names are part of the ABI, and no alignment ever changes.
//!
//! Everything else (a removed field, a changed signature, a changed meaning) is a major bump.
//!
//! # Ownership, in one place
//!
//! - A [`Tensor`] handed *into* a plugin call (a weight, a gradient, statistics) is borrowed for
//!   the duration of that call only: do not store its id or view, and never write through it.
//! - A [`Tensor`] returned by a [`HostOps`] function is owned by the plugin until it passes it to
//!   [`HostOps::release`] (the SDK's [`sdk::OwnedTensor`] does this on drop), or moves it to the
//!   host by returning it (inside [`ScoreOut::Dense`], for example).
//! - Tensor ids are never reused within a process; a stale id gives an `InvalidArgument` error,
//!   never undefined behaviour.
//! - Strings and vectors crossing the boundary are abi_stable's `RString`/`RVec`: whoever receives
//!   them owns them.
//! - No panic unwinds across the boundary: every exported function and trait method catches
//!   panics and returns [`ErrorCode::Panicked`] (the SDK does this for plugins; the host for its
//!   callbacks).

#![deny(missing_docs)]
// abi_stable names its generated types `HostOps_Ref` and its trait macros emit impls inside
// consts; both are its conventions, not ours to rename.
#![allow(non_camel_case_types, non_local_definitions)]

mod component;
mod error;
mod manifest;
mod ops;
mod plan;
mod root;
mod score;
mod tensor;
mod version;

pub mod sdk;

pub use abi_stable;

pub use component::{Scorer, ScorerBox, Scorer_TO, Strategy, StrategyBox, Strategy_TO};
pub use error::{ErrorCode, PluginError};
pub use manifest::{
    Capabilities, ComponentInfo, ComponentKind, ConfigEntry, DeviceSet, Granularity,
    GranularitySet, InputSet, ParamKind, ParamSpec, ParamValue, PluginManifest,
};
pub use ops::{BinaryOp, HostOps, HostOps_Ref, KthValue, ReduceOp, UnaryOp};
pub use plan::{
    Decision, Hessian, LoadPoint, NmPattern, PlanContext, PlanContextMut, PlanContext_TO,
    SelectScope, Selection, Target,
};
pub use root::{PluginModule, PluginModule_Ref, PLUGIN_BASE_NAME};
pub use score::{ParamInfo, ParamRole, ScoreInputs, ScoreOut, ScoreRequest};
pub use tensor::{DType, Device, DeviceKind, Tensor, TensorId, TensorView, MAX_DIMS};
pub use version::{AbiVersion, ABI_MAJOR, ABI_MINOR, HOST_CAPABILITIES};
