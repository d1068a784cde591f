//! The allocation step of `prune`: the layer load for allocators that measure it, then the
//! allocator's exact counts into the pass's configuration.

use std::time::Instant;

use birdbone_host::recipe::Calibration;
use birdbone_llama::{LoadByParam, Loaded};
use birdbone_tch::{ActivationStats, PassInputs, Pruner};

use crate::progress::{note, Progress};

/// Calibration windows the layer load is measured on (the first of the calibration's): each
/// layer and level costs a forward pass from that layer on.
const LOAD_WINDOWS: usize = 8;

/// The load on every layer, when the allocator asks for it (`InputSet::LOAD`): the calibration
/// loss with each layer alone pruned by the pass's scorer and strategy at the target sparsity
/// and 0.1 above it, put back after each measurement.
pub fn measure_load(
    pruner: &mut Pruner,
    m: &Loaded,
    windows: &[Vec<i64>],
    c: &Calibration,
    cfg: &birdbone_host::PassConfig,
    stats: &ActivationStats,
) -> anyhow::Result<Option<LoadByParam>> {
    if !pruner.allocator_needs_load() {
        return Ok(None);
    }
    let levels = [cfg.sparsity, (cfg.sparsity + 0.1).min(1.0)];
    if levels[1] <= levels[0] {
        anyhow::bail!(
            "the layer load is measured at the target and above it: a sparsity of 1 leaves no room"
        );
    }
    let mut bar = Progress::new("layer load", m.model.num_blocks() as u64, "layers");
    let (load, out) = birdbone_llama::load_by_param::<anyhow::Error>(
        &m.model,
        pruner,
        &windows[..windows.len().min(LOAD_WINDOWS)],
        c.batch,
        &levels,
        cfg,
        stats,
        &mut |d| bar.set(d as u64),
    )?;
    bar.finish();
    note!(
        "layer load: dense loss {:.4}, measured at {:?} on {} tokens in {:.1} s",
        load.dense,
        levels,
        load.tokens,
        load.seconds
    );
    Ok(Some(out))
}

/// Runs the pruner's allocator and puts its allocation in `cfg`.
pub fn allocate(
    pruner: &mut Pruner,
    model: &(impl birdbone_tch::ParamSource + ?Sized),
    cfg: &mut birdbone_host::PassConfig,
    inputs: PassInputs<'_>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    let a = pruner.allocate(model, cfg, inputs)?;
    let (lo, hi) = a.sparsity_range();
    note!(
        "allocation by {}: {} of {} weights over {} parameters, {:.1}% to {:.1}% each, in {:.2} s",
        a.allocator,
        a.pruned,
        a.total,
        a.params.len(),
        100.0 * lo,
        100.0 * hi,
        t.elapsed().as_secs_f64()
    );
    cfg.allocation = Some(std::sync::Arc::new(a));
    Ok(())
}

/// The allocation of a calibrated pass: the layer load when the allocator asks for it, then
/// the allocator over the model's statistics.
pub fn allocate_calibrated(
    pruner: &mut Pruner,
    m: &Loaded,
    windows: &[Vec<i64>],
    c: &Calibration,
    cfg: &mut birdbone_host::PassConfig,
    stats: &ActivationStats,
) -> anyhow::Result<()> {
    let load = measure_load(pruner, m, windows, c, cfg, stats)?;
    let inputs = PassInputs {
        stats: Some(stats),
        load: load.as_ref(),
        ..Default::default()
    };
    allocate(pruner, m.model.var_store(), cfg, inputs)
}
