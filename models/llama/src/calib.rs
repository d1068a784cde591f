use std::collections::BTreeMap;
use std::time::Instant;

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
) -> Result<(ActivationSums, CalibrationReport)> {
    collect_stats_with(model, windows, batch, &mut |_| {})
}

/// [`collect_stats`], calling `progress(windows done)` after every forward pass.
pub fn collect_stats_with(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<(ActivationSums, CalibrationReport)> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let mut rec = StatsRecorder::new();
    let mut tokens = 0;
    for ids in batches(windows, batch, model) {
        let ids = ids?;
        tokens += ids.numel() as u64;
        let _ = model.forward(&ids, None, Some(&mut rec))?;
        progress((tokens / ids.size()[1] as u64) as usize);
    }
    Ok((
        rec.into_sums(),
        CalibrationReport {
            windows: windows.len(),
            tokens,
            seconds: started.elapsed().as_secs_f64(),
        },
    ))
}

/// Per weight name: the per-column sums of squared inputs (f32 `[in_features]`, on the model's
/// device) and the number of tokens summed. What Wanda-style scorers take as activation
/// statistics.
pub type ActivationSums = BTreeMap<String, (Tensor, u64)>;

/// The sequential calibration of the Wanda paper: block by block, statistics for block `i` are
/// collected on the outputs of blocks `0..i` *after* the caller changed them, then
/// `per_block(i, names, sums)` runs (the caller prunes block `i`'s Linear weights, named in
/// `names`, with `sums`), and block `i`'s new outputs feed block `i + 1`. Hidden states of the
/// calibration windows are kept between blocks (windows × tokens × hidden), so the model runs
/// once.
///
/// Each block is its own pass (a strategy sees one block's weights), so prune with a strategy
/// whose scope is a parameter or a row (`layerwise`, `nm`); a global threshold over one block at
/// a time is not a global threshold.
pub fn for_each_block_sequential<E: From<crate::Error>>(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    mut per_block: impl FnMut(usize, &[String], ActivationSums) -> std::result::Result<(), E>,
) -> std::result::Result<CalibrationReport, E> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let mut hidden: Vec<Tensor> = Vec::new();
    let mut tokens = 0;
    for ids in batches(windows, batch, model) {
        let ids = ids?;
        tokens += ids.numel() as u64;
        hidden.push(model.embed(&ids)?);
    }
    for i in 0..model.num_blocks() {
        let _span = tracing::debug_span!("calibration block", block = i).entered();
        let names = model.block_linear_names(i);
        let mut rec = StatsRecorder::new();
        for x in &hidden {
            let _ = model.block_forward(i, x, 0, None, Some(&mut rec))?;
        }
        per_block(i, &names, rec.into_sums())?;
        for x in hidden.iter_mut() {
            *x = model.block_forward(i, x, 0, None, None)?;
        }
    }
    Ok(CalibrationReport {
        windows: windows.len(),
        tokens,
        seconds: started.elapsed().as_secs_f64(),
    })
}
