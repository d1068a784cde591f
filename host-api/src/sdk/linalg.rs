//! Safe wrappers over the host operations of ABI 1.1: linear algebra, exact masks and the
//! optimal-brain-surgeon sweep. Each checks that the host has the function (a 1.0 host has
//! none) and says so by name when it does not.

use abi_stable::std_types::{RNone, ROption, RResult, RSome};

use crate::{
    sdk::{AsTensorId, Host, OwnedTensor},
    NmPattern, PluginError, Tensor,
};

fn missing(name: &str) -> PluginError {
    PluginError::unsupported(format!(
        "the host has no '{name}' operation (it came in ABI 1.1)"
    ))
}

impl Host {
    fn owned_or(
        &self,
        name: &str,
        f: Option<impl FnOnce() -> RResult<Tensor, PluginError>>,
    ) -> Result<OwnedTensor, PluginError> {
        let f = f.ok_or_else(|| missing(name))?;
        f().into_result().map(|t| self.own(t))
    }

    /// `op(a) @ op(b)` as a new tensor, `op` transposing when asked.
    pub fn matmul(
        &self,
        a: impl AsTensorId,
        b: impl AsTensorId,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().matmul();
        self.owned_or(
            "matmul",
            f.map(|f| {
                move || {
                    f(
                        a.tensor_id(),
                        b.tensor_id(),
                        transpose_a,
                        transpose_b,
                        RNone,
                    )
                }
            }),
        )
    }

    /// `a @ b` written into `out` (a tensor or view the plugin owns).
    pub fn matmul_into(
        &self,
        a: impl AsTensorId,
        b: impl AsTensorId,
        out: &OwnedTensor,
    ) -> Result<(), PluginError> {
        let f = self.ops().matmul().ok_or_else(|| missing("matmul"))?;
        f(
            a.tensor_id(),
            b.tensor_id(),
            false,
            false,
            RSome(out.tensor_id()),
        )
        .into_result()
        .map(drop)
    }

    /// The Cholesky factor (lower, or upper when `upper`); an error when `a` is not positive
    /// definite.
    pub fn cholesky(&self, a: impl AsTensorId, upper: bool) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().cholesky();
        self.owned_or("cholesky", f.map(|f| move || f(a.tensor_id(), upper)))
    }

    /// `A⁻¹` from the Cholesky factor of `A`.
    pub fn cholesky_inverse(
        &self,
        factor: impl AsTensorId,
        upper: bool,
    ) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().cholesky_inverse();
        self.owned_or(
            "cholesky_inverse",
            f.map(|f| move || f(factor.tensor_id(), upper)),
        )
    }

    /// `X` with `A X = B` (`left`) or `X A = B`, `A` triangular.
    pub fn solve_triangular(
        &self,
        a: impl AsTensorId,
        b: impl AsTensorId,
        upper: bool,
        left: bool,
        unit_diagonal: bool,
    ) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().solve_triangular();
        self.owned_or(
            "solve_triangular",
            f.map(|f| move || f(a.tensor_id(), b.tensor_id(), upper, left, unit_diagonal)),
        )
    }

    /// Elements `start..start + length` along `dim`: a view of a tensor the plugin owns, a copy
    /// of a borrowed one.
    pub fn narrow(
        &self,
        x: impl AsTensorId,
        dim: i64,
        start: i64,
        length: i64,
    ) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().narrow();
        self.owned_or(
            "narrow",
            f.map(|f| move || f(x.tensor_id(), dim, start, length)),
        )
    }

    /// The main diagonal: a view of a tensor the plugin owns, a copy of a borrowed one.
    pub fn diagonal(&self, x: impl AsTensorId) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().diagonal();
        self.owned_or("diagonal", f.map(|f| move || f(x.tensor_id())))
    }

    /// A bool mask of exactly the `k` smallest elements (ties: lower flat index first).
    pub fn smallest_mask(&self, x: impl AsTensorId, k: u64) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().smallest_mask();
        self.owned_or("smallest_mask", f.map(|f| move || f(x.tensor_id(), k)))
    }

    /// SparseGPT's column sweep over one block, in place (see [`crate::HostOps::obs_sweep`]);
    /// returns the errors.
    pub fn obs_sweep(
        &self,
        w: &OwnedTensor,
        hinv: impl AsTensorId,
        prune: &OwnedTensor,
        nm: Option<NmPattern>,
    ) -> Result<OwnedTensor, PluginError> {
        let f = self.ops().obs_sweep();
        let nm: ROption<NmPattern> = nm.into();
        self.owned_or(
            "obs_sweep",
            f.map(|f| move || f(w.tensor_id(), hinv.tensor_id(), prune.tensor_id(), nm)),
        )
    }
}
