use std::time::Instant;

use birdbone_tch::{
    ActivationStats, MaskSet, ParamFilter, PassConfig, PassInputs, PassReport, Pruner,
};
use tch::Tensor;

use crate::{
    model::{Llama, StatsRecorder},
    Result,
};

/// What a calibration run saw.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct CalibrationReport {
    /// Windows run.
    pub windows: usize,
    /// Tokens run.
    pub tokens: u64,
    /// Seconds taken (for the sequential variant, pruning included).
    pub seconds: f64,
}

fn batches<'a>(
    windows: &'a [Vec<i64>],
    batch: usize,
    model: &Llama,
) -> impl Iterator<Item = Result<Tensor>> + 'a {
    let device = model.device();
    windows.chunks(batch.max(1)).map(move |chunk| {
        let flat: Vec<i64> = chunk.iter().flatten().copied().collect();
        Ok(Tensor::from_slice(&flat)
            .f_view([chunk.len() as i64, chunk[0].len() as i64])?
            .f_to_device(device)?)
    })
}

/// One-pass statistics: every Linear's squared inputs summed over the calibration windows, with
/// the model as it is.
pub fn collect_stats(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
) -> Result<(ActivationStats, CalibrationReport)> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let mut rec = StatsRecorder::new();
    let mut tokens = 0;
    for ids in batches(windows, batch, model) {
        let ids = ids?;
        tokens += ids.numel() as u64;
        let _ = model.forward(&ids, None, Some(&mut rec))?;
    }
    Ok((
        rec.into_stats(),
        CalibrationReport {
            windows: windows.len(),
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// The sequential variant of the Wanda paper: block by block, statistics for block `i` are
/// collected on the outputs of blocks `0..i` *after* those were pruned, then block `i` is pruned
/// with `pruner`, and its pruned outputs feed block `i + 1`. Hidden states of the calibration
/// windows are kept between blocks (windows × tokens × hidden), so the model runs once.
///
/// Each block is its own pass (the strategy sees one block's weights), so use a strategy whose
/// scope is a parameter or a row (`layerwise`, `nm`); a global threshold over one block at a time
/// is not a global threshold.
pub fn prune_sequential(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    pruner: &mut Pruner,
    config: &PassConfig,
) -> Result<(Vec<PassReport>, MaskSet, CalibrationReport)> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let mut hidden: Vec<Tensor> = Vec::new();
    let mut tokens = 0;
    for ids in batches(windows, batch, model) {
        let ids = ids?;
        tokens += ids.numel() as u64;
        hidden.push(model.embed(&ids)?);
    }
    let mut reports = Vec::new();
    let mut masks = MaskSet::new();
    for i in 0..model.num_blocks() {
        let names = model.block_linear_names(i);
        let mut rec = StatsRecorder::new();
        for x in &hidden {
            let _ = model.block_forward(i, x, 0, None, Some(&mut rec))?;
        }
        let stats = rec.into_stats();
        // This block's weights that the pass's filter selects.
        let block_filter = ParamFilter {
            include: names.clone(),
            exclude: config.filter.exclude.clone(),
        };
        let block_config = PassConfig {
            filter: block_filter,
            ..config.clone()
        };
        let selected: Vec<String> = names
            .iter()
            .filter(|n| config.filter.selects(n, &[1, 1]))
            .cloned()
            .collect();
        if !selected.is_empty() {
            let (report, block_masks) = pruner.run(
                model.var_store(),
                &block_config,
                PassInputs {
                    stats: Some(&stats),
                    ..Default::default()
                },
            )?;
            masks.extend(block_masks);
            reports.push(report);
        }
        for x in hidden.iter_mut() {
            *x = model.block_forward(i, x, 0, None, None)?;
        }
    }
    Ok((
        reports,
        masks,
        CalibrationReport {
            windows: windows.len(),
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}
