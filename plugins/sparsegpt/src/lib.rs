//! Implements host-api's `Strategy` by SparseGPT (Frantar & Alistarh, 2023, "SparseGPT: Massive
//! Language Models Can Be Accurately Pruned in One-Shot"), as IST-DASLab/sparsegpt's
//! `fasterprune` does it: for each Linear weight `W` `[rows, cols]` with calibration Hessian
//! `H = XᵀX`,
//!
//! 1. dead inputs (`H[j][j] = 0`) get `H[j][j] = 1` and `W[:, j] = 0`; `H += λ I` with
//!    `λ = percdamp · mean(diag H)`;
//! 2. `U` = the upper Cholesky factor of `H⁻¹` (Cholesky, inverse from it, Cholesky again);
//! 3. for each block of `blocksize` columns: the mask (unstructured: the `round(s · n)` smallest
//!    `w² / U[j][j]²` of the block, ties by lower row-major index; N:M: decided in the sweep at
//!    each group's first column), the host's OBS sweep (prune, spread each error over the
//!    block's later columns), then the columns after the block take the block's errors:
//!    `W[:, after] -= E · U[block, after]`;
//! 4. the new `W` and its mask are proposed to the host, which writes them at commit.
//!
//! Everything runs through the host's operations (ABI 1.1), on the weights' device. Linears that
//! read one input (q/k/v, gate/up) share `U`: it is factored once per pass. The paper's
//! sequential calibration (each decoder block calibrated on the outputs of the blocks before
//! it, as rewritten) is the host's: `birdbone prune` runs it when the calibration mode is
//! `sequential`, the default for this strategy.

#![deny(missing_docs)]

use std::collections::HashMap;

use birdbone_host_api::sdk::prelude::*;

struct SparseGpt {
    host: Host,
    blocksize: i64,
    percdamp: f64,
}

/// `U` (upper Cholesky factor of the damped `H⁻¹`) and the dead-input mask of one input.
struct Factored {
    u: OwnedTensor,
    dead: OwnedTensor,
}

impl SparseGpt {
    fn factor(&self, hessian: &Tensor, name: &str) -> Result<Factored> {
        let h = self.host;
        let m = h.cast(hessian, DType::F32)?;
        let diag = h.diagonal(&m)?;
        let dead = h.scalar(BinaryOp::Eq, &diag, 0.0)?;
        h.masked_fill(&diag, &dead, 1.0)?;
        let mean = h.to_vec(h.reduce(ReduceOp::Mean, &diag, None, false)?)?[0];
        if !mean.is_finite() {
            return Err(PluginError::non_finite(format!(
                "the Hessian of '{name}' has a non-finite diagonal"
            )));
        }
        h.scalar_inplace(BinaryOp::Add, &diag, self.percdamp * mean)?;
        let context = |e: PluginError| {
            PluginError::new(
                e.code,
                format!(
                    "'{name}': {} (after {}% dampening)",
                    e.message,
                    self.percdamp * 100.0
                ),
            )
        };
        let l = h.cholesky(&m, false).map_err(context)?;
        let inv = h.cholesky_inverse(&l, false)?;
        drop((l, diag, m));
        let u = h.cholesky(&inv, true).map_err(context)?;
        Ok(Factored { u, dead })
    }

    /// Prunes one weight; returns its new values and keep mask.
    fn prune(
        &self,
        info: &ParamInfo,
        weight: &Tensor,
        f: &Factored,
        target: &Target,
        allocated: Option<u64>,
    ) -> Result<(OwnedTensor, OwnedTensor)> {
        let h = self.host;
        let (rows, cols) = (info.shape[0], info.shape[1]);
        let nm = target.nm.into_option();
        if let Some(p) = nm {
            if cols % p.m as i64 != 0 || self.blocksize % p.m as i64 != 0 {
                return Err(PluginError::invalid(format!(
                    "{}:{} does not fit '{}' ({cols} columns, blocks of {}): M must divide both",
                    p.n, p.m, info.name, self.blocksize
                )));
            }
        }
        let w = h.cast(weight, DType::F32)?;
        h.masked_fill(&w, &f.dead, 0.0)?;
        let pruned = h.full(&[rows, cols], DType::Bool, info.device, 0.0)?;
        // An allocation's count for the weight is split over the column blocks in proportion
        // to their sizes (exactly: largest remainder); without one, round(s · n) per block.
        let widths: Vec<u64> = (0..cols)
            .step_by(self.blocksize as usize)
            .map(|i1| (self.blocksize.min(cols - i1) * rows) as u64)
            .collect();
        let per_block: Vec<u64> = match allocated {
            Some(c) => split_count(c, &widths),
            None => widths
                .iter()
                .map(|&n| exact_count(target.sparsity, n))
                .collect(),
        };
        let mut i1 = 0;
        while i1 < cols {
            let count = self.blocksize.min(cols - i1);
            let w1 = h.narrow(&w, 1, i1, count)?;
            let u_rows = h.narrow(&f.u, 0, i1, count)?;
            let hinv1 = h.narrow(&u_rows, 1, i1, count)?;
            let p1 = match nm {
                Some(_) => h.full(&[rows, count], DType::Bool, info.device, 0.0)?,
                None => {
                    let d = h.diagonal(&hinv1)?;
                    let d2 = h.unary(UnaryOp::Square, &d)?;
                    let tmp = h.unary(UnaryOp::Square, &w1)?;
                    h.binary_inplace(BinaryOp::Div, &tmp, &d2)?;
                    h.smallest_mask(&tmp, per_block[(i1 / self.blocksize) as usize])?
                }
            };
            let err = h.obs_sweep(&w1, &hinv1, &p1, nm)?;
            h.copy_into(&p1, &h.narrow(&pruned, 1, i1, count)?)?;
            let i2 = i1 + count;
            if i2 < cols {
                let after = h.narrow(&u_rows, 1, i2, cols - i2)?;
                let update = h.matmul(&err, &after, false, false)?;
                h.binary_inplace(BinaryOp::Sub, &h.narrow(&w, 1, i2, cols - i2)?, &update)?;
            }
            i1 = i2;
        }
        let keep = h.scalar(BinaryOp::Eq, &pruned, 0.0)?;
        Ok((w, keep))
    }
}

impl StrategyImpl for SparseGpt {
    fn select(&mut self, plan: &mut Plan<'_>, target: &Target) -> Result<()> {
        let infos = plan.params().to_vec();
        for info in &infos {
            if info.shape.len() != 2 {
                return Err(PluginError::invalid(format!(
                    "sparsegpt prunes Linear weights; '{}' is {:?}",
                    info.name,
                    info.shape.as_slice()
                )));
            }
        }
        // Factors of the inputs still to come; one input's factor is dropped after its last
        // Linear, so a 7B block holds at most one [14336²] factor at a time.
        let mut last_use: HashMap<u64, usize> = HashMap::new();
        let mut hessians = Vec::with_capacity(infos.len());
        for (i, info) in infos.iter().enumerate() {
            let hs = plan.hessian(info.index)?;
            if hs.matrix.dims() != [info.shape[1], info.shape[1]] {
                return Err(PluginError::invalid(format!(
                    "the Hessian of '{}' is {:?}; the weight has {} inputs",
                    info.name,
                    hs.matrix.dims(),
                    info.shape[1]
                )));
            }
            last_use.insert(hs.group, i);
            hessians.push(hs);
        }
        let mut factors: HashMap<u64, Factored> = HashMap::new();
        for (i, (info, hs)) in infos.iter().zip(&hessians).enumerate() {
            let f = match factors.entry(hs.group) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(self.factor(&hs.matrix, &info.name)?)
                }
            };
            let weight = plan.weight(info.index)?;
            let allocated = plan.allocated(info.index);
            let (values, keep) = self.prune(info, &weight, f, target, allocated)?;
            plan.propose(info.index, &values, &keep)?;
            if last_use[&hs.group] == i {
                factors.remove(&hs.group);
            }
        }
        Ok(())
    }
}

/// The plugin.
pub struct SparseGptPlugin;

impl Plugin for SparseGptPlugin {
    const NAME: &'static str = "sparsegpt";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "SparseGPT: one-shot pruning with optimal-brain-surgeon reconstruction";

    fn components() -> Vec<ComponentInfo> {
        let mut c = ComponentInfo::strategy(
            "sparsegpt",
            "SparseGPT (Frantar & Alistarh, 2023): prunes each Linear by H = X^T X and rewrites the weights it keeps; unstructured or N:M",
        )
        .param("blocksize", ParamValue::Int(128), "columns per block (the mask is chosen per block); 1 to 256")
        .param("percdamp", ParamValue::Float(0.01), "dampening: this fraction of the mean Hessian diagonal is added to it")
        .inputs(InputSet::HESSIAN)
        .granularity(GranularitySet::of(Granularity::Unstructured).with(Granularity::NM));
        for cap in [
            "ops.linalg",
            "ops.select-mask",
            "ops.obs-sweep",
            "inputs.hessian",
            "plan.reconstruct",
            "select.allocated",
        ] {
            c = c.requires(cap);
        }
        vec![c]
    }

    fn create_strategy(name: &str, config: &Config, host: Host) -> Result<Box<dyn StrategyImpl>> {
        if name != "sparsegpt" {
            return Err(unknown_component(name));
        }
        let blocksize = config.i64("blocksize")?;
        if !(1..=256).contains(&blocksize) {
            return Err(PluginError::invalid(format!(
                "blocksize must be 1 to 256, got {blocksize}"
            )));
        }
        let percdamp = config.f64("percdamp")?;
        if !(percdamp.is_finite() && percdamp >= 0.0) {
            return Err(PluginError::invalid(format!(
                "percdamp must be a finite number >= 0, got {percdamp}"
            )));
        }
        Ok(Box::new(SparseGpt {
            host,
            blocksize,
            percdamp,
        }))
    }
}

birdbone_host_api::export_plugin!(SparseGptPlugin);
