use std::collections::BTreeMap;
use std::time::Instant;

use tch::Tensor;

use crate::{
    model::{HessianSums, Llama, StatsRecorder},
    Result,
};

/// What a calibration run recorded: the squared-input sums always, `XᵀX` when asked for.
pub struct Calibrated {
    /// Per weight name: per-column sums of squared inputs and tokens (Wanda's statistics).
    pub sums: ActivationSums,
    /// Per weight name: `XᵀX` of its inputs (empty unless asked for).
    pub hessians: HessianSums,
}

fn recorder(hessians: bool) -> StatsRecorder {
    if hessians {
        StatsRecorder::new().with_hessians()
    } else {
        StatsRecorder::new()
    }
}

fn calibrated(rec: StatsRecorder) -> Calibrated {
    let (sums, hessians) = rec.into_parts();
    Calibrated { sums, hessians }
}

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

pub(crate) fn batches<'a>(
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
    calibrate(model, windows, batch, false, progress).map(|(c, r)| (c.sums, r))
}

/// One-pass calibration: every Linear's statistics over the calibration windows, with the model
/// as it is, and `XᵀX` of every distinct Linear input when `hessians`; `progress(windows done)`
/// after every forward pass.
pub fn calibrate(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    hessians: bool,
    progress: &mut dyn FnMut(usize),
) -> Result<(Calibrated, CalibrationReport)> {
    let started = Instant::now();
    let _g = tch::no_grad_guard();
    let mut rec = recorder(hessians);
    let mut tokens = 0;
    for ids in batches(windows, batch, model) {
        let ids = ids?;
        tokens += ids.numel() as u64;
        let _ = model.forward(&ids, None, Some(&mut rec))?;
        progress((tokens / ids.size()[1] as u64) as usize);
    }
    Ok((
        calibrated(rec),
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
    for_each_block_calibrated(model, windows, batch, false, |i, names, c| {
        per_block(i, names, c.sums)
    })
}

/// [`for_each_block_sequential`], handing each block its [`Calibrated`] statistics, with `XᵀX`
/// of every distinct Linear input when `hessians` (SparseGPT's sequential calibration: each
/// block's Hessians come from the outputs of the blocks before it, as they were rewritten).
pub fn for_each_block_calibrated<E: From<crate::Error>>(
    model: &Llama,
    windows: &[Vec<i64>],
    batch: usize,
    hessians: bool,
    mut per_block: impl FnMut(usize, &[String], Calibrated) -> std::result::Result<(), E>,
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
        let mut rec = recorder(hessians);
        for x in &hidden {
            let _ = model.block_forward(i, x, 0, None, Some(&mut rec))?;
        }
        per_block(i, &names, calibrated(rec))?;
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
