use abi_stable::StableAbi;

/// Major version of the Birdbone plugin ABI. A plugin of another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// Minor version of the Birdbone plugin ABI. A host accepts plugins of this minor or older.
pub const ABI_MINOR: u32 = 2;

/// Capabilities a host of this ABI version offers; components name the ones they require in
/// [`crate::Capabilities::requires`].
///
/// - `ops.v1`: the [`crate::HostOps`] table of ABI 1.0 (tensors, elementwise, reductions,
///   histogram, k-th value, top-k, conversion, host copies).
/// - `select.exact`: [`crate::PlanContext::select_k_smallest`] with exact counts and
///   deterministic ties.
/// - `decide.nm`: [`crate::Decision::NM`].
/// - `scores.fused-magnitude`: [`crate::ScoreOut::Magnitude`], evaluated inside the host's
///   selection kernels without materialising scores.
///
/// Added in ABI 1.1, for methods that reconstruct the weights they keep (SparseGPT):
///
/// - `ops.linalg`: [`crate::HostOps`]' `matmul`, `cholesky`, `cholesky_inverse`,
///   `solve_triangular`, `narrow` and `diagonal`;
/// - `ops.select-mask`: `smallest_mask`, an exact k-smallest mask of one tensor;
/// - `ops.obs-sweep`: `obs_sweep`, the optimal-brain-surgeon column sweep;
/// - `inputs.hessian`: [`crate::PlanContext::hessian`], `XᵀX` of each Linear's calibration
///   inputs ([`crate::InputSet::HESSIAN`]);
/// - `plan.reconstruct`: [`crate::PlanContext::weight`] and [`crate::PlanContext::propose`],
///   new values for the weights a strategy keeps.
///
/// Added in ABI 1.2, for allocation (a sparsity per parameter before selection):
///
/// - `plan.allocate`: the host calls [`crate::Strategy::allocate`] on components that require
///   it (allocators; the component kind stays `Strategy`, as 1.x's kinds are fixed);
/// - `select.allocated`: [`crate::PlanContext::allocated`] and
///   [`crate::PlanContext::select_allocated`], exact counts per parameter and per row;
/// - `inputs.load`: [`crate::PlanContext::load`], each layer's calibration loss pruned alone
///   ([`crate::InputSet::LOAD`]).
pub const HOST_CAPABILITIES: &[&str] = &[
    "ops.v1",
    "select.exact",
    "decide.nm",
    "scores.fused-magnitude",
    "ops.linalg",
    "ops.select-mask",
    "ops.obs-sweep",
    "inputs.hessian",
    "plan.reconstruct",
    "plan.allocate",
    "select.allocated",
    "inputs.load",
];

/// A Birdbone ABI version: `major.minor`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbiVersion {
    /// Changes that break plugins bump this.
    pub major: u32,
    /// Backward-compatible additions bump this.
    pub minor: u32,
}

impl AbiVersion {
    /// The version this crate defines.
    pub const CURRENT: AbiVersion = AbiVersion {
        major: ABI_MAJOR,
        minor: ABI_MINOR,
    };

    /// Whether a host speaking `self` can load a plugin built against `plugin`:
    /// majors equal and the host's minor at least the plugin's.
    pub fn can_host(self, plugin: AbiVersion) -> bool {
        self.major == plugin.major && self.minor >= plugin.minor
    }
}

impl std::fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
