//! Exact selection and in-place pruning on whatever device the weights live: the CPU path runs
//! `birdbone-select` on host memory, the CUDA path runs `birdbone-cuda`'s kernels on device
//! memory, and both follow the same rules bit for bit.

mod cpu;
mod cuda;
mod obs;
pub(crate) use obs::obs_sweep;
pub mod stream;

use std::sync::Arc;

use birdbone_select::{mask_bytes, GlobalSelection, ParamQuota};
use tch::{Device, Kind, Tensor};

use crate::error::{Error, HostError, Result};

/// How the host evaluates one parameter's scores.
pub(crate) enum Scores {
    /// `|w|`, or `|w[i][j]| * scale[j]` in f32, computed where it is used.
    Magnitude {
        /// The weight (the model's own tensor).
        weight: Tensor,
        /// f32 `[cols]`, contiguous, on the weight's device.
        scale: Option<Tensor>,
    },
    /// A score tensor (f32, f16 or bf16, contiguous, the weight's element count).
    Dense(Tensor),
}

impl Scores {
    /// Another handle on the same tensors.
    pub fn shallow_clone(&self) -> Scores {
        match self {
            Scores::Magnitude { weight, scale } => Scores::Magnitude {
                weight: weight.shallow_clone(),
                scale: scale.as_ref().map(Tensor::shallow_clone),
            },
            Scores::Dense(t) => Scores::Dense(t.shallow_clone()),
        }
    }
    pub fn tensor(&self) -> &Tensor {
        match self {
            Scores::Magnitude { weight, .. } => weight,
            Scores::Dense(t) => t,
        }
    }
    pub fn device(&self) -> Device {
        self.tensor().device()
    }
    pub fn numel(&self) -> u64 {
        self.tensor().numel() as u64
    }
    /// The last dimension (the row length of a Linear weight).
    pub fn cols(&self) -> u64 {
        self.tensor().size().last().copied().unwrap_or(1).max(1) as u64
    }
    /// The scores as a dense f32 tensor of the weight's shape, computed the way the selection
    /// kernels compute them (so the values are bit-identical).
    pub fn materialize(&self) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        Ok(match self {
            Scores::Magnitude {
                weight,
                scale: None,
            } => weight.f_abs()?.f_to_kind(Kind::Float)?,
            Scores::Magnitude {
                weight,
                scale: Some(s),
            } => weight.f_abs()?.f_to_kind(Kind::Float)?.f_mul(s)?,
            Scores::Dense(t) => t.f_to_kind(Kind::Float)?,
        })
    }
}

/// What to prune in one parameter: the host's rule over this engine's per-row selections.
pub(crate) type Rule = birdbone_host::plan::Rule<RowSel>;

/// Per-row selections.
pub(crate) enum RowSel {
    /// Per-row thresholds, on the weight's device, each `[rows]` int32: threshold keys (bit
    /// patterns), the tie rule, ties present. The tie rule is the engine's own: on the CPU the
    /// number of ties to prune; on CUDA the column of the last tie pruned (!0: none), which lets
    /// the apply pass stream without counting.
    Thresholds {
        keys: Tensor,
        take: Tensor,
        ties: Tensor,
    },
    /// The `k` lowest of every row, selected by the pass that prunes (CUDA, fused magnitude
    /// scores: each row is read once, selected in registers and written, with no thresholds
    /// stored). Its scores were checked finite when it was made.
    AtApply { k: u64 },
}

impl RowSel {
    pub fn shallow_clone(&self) -> RowSel {
        match self {
            RowSel::Thresholds { keys, take, ties } => RowSel::Thresholds {
                keys: keys.shallow_clone(),
                take: take.shallow_clone(),
                ties: ties.shallow_clone(),
            },
            RowSel::AtApply { k } => RowSel::AtApply { k: *k },
        }
    }
}

/// A result whose error may name the item (by position) it came from.
pub(crate) type Located<T> = Result<T, (Option<usize>, Error)>;

/// A count the device may still be computing: read it when it is needed (one wait for many).
pub(crate) enum Count {
    Ready(u64),
    /// An int64 `[1]` tensor.
    Device(Tensor),
    /// Entry `i` of a batch's counts.
    Batch(Arc<cuda::HostCopy>, usize),
}

impl Count {
    pub fn get(&self) -> Result<u64> {
        Ok(match self {
            Count::Ready(n) => *n,
            Count::Device(t) => t.f_int64_value(&[0])? as u64,
            Count::Batch(c, i) => c.get(*i)? as u64,
        })
    }
}

/// The flat index of a non-finite element, if any, possibly still being computed on the device.
pub(crate) enum FiniteCheck {
    Ready(Option<u64>),
    /// Entry `i` of a batch of indices (-1 when every element is finite).
    Batch(Arc<cuda::HostCopy>, usize),
}

impl FiniteCheck {
    pub fn get(&self) -> Result<Option<u64>> {
        Ok(match self {
            FiniteCheck::Ready(x) => *x,
            FiniteCheck::Batch(c, i) => {
                let v = c.get(*i)?;
                (v != -1).then_some(v as u64)
            }
        })
    }
}

/// A streaming global selection (see `birdbone_select::GlobalSelector`).
pub(crate) trait GlobalSel {
    fn feed_high(&mut self, p: usize, scores: &Scores) -> Result<()>;
    fn needs_low_pass(&mut self) -> Result<bool>;
    fn feed_low(&mut self, p: usize, scores: &Scores) -> Result<()>;
    fn finish(self: Box<Self>) -> Result<GlobalSelection>;
    /// After a `NonFinite` error: which fed parameter (by feed index) held the value.
    fn bad_param(&self) -> Option<usize>;
}

/// A selector for `k` weights over `params` parameters on `device`.
pub(crate) fn global_selector(device: Device, k: u64, params: usize) -> Result<Box<dyn GlobalSel>> {
    match device {
        Device::Cuda(i) => cuda::global_selector(i, k, params),
        _ => Ok(Box::new(cpu::CpuGlobal::new(k, params))),
    }
}

/// One exact selection per parameter at once (`ks[i]` of `scores[i]`), for sources that cost
/// nothing to hold (fused magnitude scores). On error, the index of the offending parameter.
pub(crate) fn select_each(
    scores: &[Scores],
    ks: &[u64],
) -> Result<Vec<ParamQuota>, (Option<usize>, Error)> {
    match scores.first().map(Scores::device) {
        Some(Device::Cuda(i)) => cuda::select_each(i, scores, ks),
        _ => {
            let mut out = Vec::with_capacity(scores.len());
            for (p, (s, &k)) in scores.iter().zip(ks).enumerate() {
                let mut sel = cpu::CpuGlobal::new(k, 1);
                let r = (|| {
                    sel.feed_high(0, s)?;
                    if sel.needs_low_pass()? {
                        sel.feed_low(0, s)?;
                    }
                    Ok(Box::new(sel).finish()?.params[0])
                })();
                out.push(r.map_err(|e| (Some(p), e))?);
            }
            Ok(out)
        }
    }
}

/// `out = sqrt(in)` for each pair (contiguous f32 CUDA tensors of equal length): one launch per
/// device (see `crate::deferred`).
pub(crate) fn sqrt_many(pairs: &[(Tensor, Tensor)]) -> Result<()> {
    cuda::sqrt_many(pairs)
}

/// Per-row thresholds for pruning `ks[i]` weights of every row of `scores[i]`, with the
/// finiteness check of the scores read.
/// The `ks[i]` lowest of every row of each `scores[i]`, one more in its first `extras[i]` rows.
/// A split selection is two whole selections (`k` and `k + 1`) whose per-row thresholds are
/// spliced: rows before `extra` from the second, the rest from the first. Each row's threshold
/// depends on that row alone, so the splice is exactly the selection a per-row count asks for.
pub(crate) fn select_rows(
    scores: &[Scores],
    ks: &[u64],
    extras: &[u64],
) -> Located<(Vec<RowSel>, Vec<FiniteCheck>)> {
    let split: Vec<usize> = (0..scores.len()).filter(|&i| extras[i] > 0).collect();
    match scores.first().map(Scores::device) {
        None => Ok((vec![], vec![])),
        Some(Device::Cuda(_)) => {
            let eager: Vec<bool> = extras.iter().map(|&e| e > 0).collect();
            let (mut sels, checks) =
                cuda::select_rows(scores, ks, &eager).map_err(|e| (None, e))?;
            if !split.is_empty() {
                let more: Vec<Scores> = split.iter().map(|&i| scores[i].shallow_clone()).collect();
                let more_ks: Vec<u64> = split.iter().map(|&i| ks[i] + 1).collect();
                let (high, _) = cuda::select_rows(&more, &more_ks, &vec![true; split.len()])
                    .map_err(|e| (None, e))?;
                for (&i, h) in split.iter().zip(high) {
                    sels[i] = splice_rows(&sels[i], &h, extras[i]).map_err(|e| (Some(i), e))?;
                }
            }
            Ok((sels, checks))
        }
        Some(_) => {
            let mut sels = Vec::with_capacity(scores.len());
            for (i, (s, &k)) in scores.iter().zip(ks).enumerate() {
                let low = cpu::select_per_row(s, k).map_err(|e| (Some(i), e))?;
                sels.push(if extras[i] > 0 {
                    let high = cpu::select_per_row(s, k + 1).map_err(|e| (Some(i), e))?;
                    splice_rows(&low, &high, extras[i]).map_err(|e| (Some(i), e))?
                } else {
                    low
                });
            }
            Ok((
                sels,
                scores.iter().map(|_| FiniteCheck::Ready(None)).collect(),
            ))
        }
    }
}

/// Per-row thresholds: the first `extra` rows from `high`, the others from `low`.
fn splice_rows(low: &RowSel, high: &RowSel, extra: u64) -> Result<RowSel> {
    let (
        RowSel::Thresholds {
            keys: lk,
            take: lt,
            ties: li,
        },
        RowSel::Thresholds {
            keys: hk,
            take: ht,
            ties: hi,
        },
    ) = (low, high)
    else {
        birdbone_host::bail!("internal: a split per-row selection needs thresholds for every row");
    };
    let rows = lk.size()[0];
    let extra = extra as i64;
    let cat = |h: &Tensor, l: &Tensor| -> Result<Tensor> {
        Ok(Tensor::f_cat(
            &[
                h.f_narrow(0, 0, extra)?,
                l.f_narrow(0, extra, rows - extra)?,
            ],
            0,
        )?)
    };
    Ok(RowSel::Thresholds {
        keys: cat(hk, lk)?,
        take: cat(ht, lt)?,
        ties: cat(hi, li)?,
    })
}

/// The bit mask (1 = keep; `birdbone_select::BitMask` layout, as a u8 tensor on the scores'
/// device) that `rule` gives, and how many weights it prunes.
pub(crate) fn build_mask(scores: &Scores, rule: &Rule) -> Result<(Tensor, Count)> {
    match scores.device() {
        Device::Cuda(_) => cuda::build_mask(scores, rule),
        _ => cpu::build_mask(scores, rule).map(|(m, n)| (m, Count::Ready(n))),
    }
}

/// Where the first NaN or infinity of each tensor is, if any.
pub(crate) fn find_non_finite(ts: &[&Tensor]) -> Result<Vec<FiniteCheck>> {
    match ts.first().map(|t| t.device()) {
        None => Ok(vec![]),
        Some(Device::Cuda(_)) => cuda::find_non_finite_many(ts),
        Some(_) => ts
            .iter()
            .map(|t| Ok(FiniteCheck::Ready(cpu::find_non_finite(t)?)))
            .collect(),
    }
}

/// Finiteness checks of the weights a strategy's decisions need checked before anything is
/// written. On CUDA they go to the device in batches while the strategy is still deciding (the
/// device reads the first weights while the host works through the rest), all into one buffer
/// that is read back once; elsewhere they run when the plan ends.
pub(crate) struct WeightChecks {
    /// Elements per launch: an eighth of the pass, so the first launch comes early.
    batch: u64,
    slots: usize,
    /// The device of the batches and their buffer (one i64 per parameter, -1 where finite).
    cuda: Option<(Device, Tensor)>,
    queued: Vec<(u32, Tensor)>,
    queued_elements: u64,
    launched: Vec<u32>,
    /// Weights on another device than the batches': checked at the end, as one call.
    rest: Vec<(u32, Tensor)>,
}

impl WeightChecks {
    /// For a pass over `slots` parameters of `elements` weights in all.
    pub fn new(slots: usize, elements: u64) -> WeightChecks {
        WeightChecks {
            batch: (elements / 8).max(1),
            slots,
            cuda: None,
            queued: Vec::new(),
            queued_elements: 0,
            launched: Vec::new(),
            rest: Vec::new(),
        }
    }

    /// Queues parameter `p`'s weight `w`.
    pub fn queue(&mut self, p: u32, w: &Tensor) -> Result<()> {
        let device = w.device();
        if self.cuda.is_none() && device.is_cuda() {
            self.cuda = Some((device, cuda::minus_ones(self.slots, device)?));
        }
        if self.cuda.as_ref().map(|(d, _)| *d) != Some(device) {
            self.rest.push((p, w.shallow_clone()));
            return Ok(());
        }
        self.queued_elements += w.numel() as u64;
        self.queued.push((p, w.shallow_clone()));
        if self.queued_elements >= self.batch {
            self.launch()?;
        }
        Ok(())
    }

    fn launch(&mut self) -> Result<()> {
        let Some((_, first)) = &self.cuda else {
            return Ok(());
        };
        if self.queued.is_empty() {
            return Ok(());
        }
        let ts: Vec<&Tensor> = self.queued.iter().map(|(_, t)| t).collect();
        let slots: Vec<usize> = self.queued.iter().map(|(p, _)| *p as usize).collect();
        cuda::find_non_finite_into(&ts, &slots, first)?;
        self.launched.extend(self.queued.drain(..).map(|(p, _)| p));
        self.queued_elements = 0;
        Ok(())
    }

    /// Every queued weight's check, in the order queued (those on another device last).
    pub fn finish(mut self) -> Result<Vec<(u32, FiniteCheck)>> {
        self.launch()?;
        let mut out = Vec::with_capacity(self.launched.len() + self.rest.len());
        if let Some((_, first)) = self.cuda.take() {
            let mut all = cuda::finite_checks(first, self.slots);
            for &p in &self.launched {
                let check = std::mem::replace(&mut all[p as usize], FiniteCheck::Ready(None));
                out.push((p, check));
            }
        }
        let rest: Vec<&Tensor> = self.rest.iter().map(|(_, t)| t).collect();
        for ((p, _), check) in self.rest.iter().zip(find_non_finite(&rest)?) {
            out.push((*p, check));
        }
        Ok(out)
    }
}

/// Zeroes, in place, the weights whose mask bit is 0, for each (weight, mask). Counts them.
pub(crate) fn apply_masks(items: &[(&Tensor, &Tensor)]) -> Result<Vec<Count>> {
    for (w, m) in items {
        check_mask(w, m)?;
    }
    match items.first().map(|(w, _)| w.device()) {
        None => Ok(vec![]),
        Some(Device::Cuda(_)) => cuda::apply_masks(items),
        Some(_) => items
            .iter()
            .map(|(w, m)| cpu::apply_mask(w, m).map(Count::Ready))
            .collect(),
    }
}

/// One parameter to prune in place: its weight, scores and rule.
pub(crate) struct PruneItem<'a> {
    pub weight: &'a Tensor,
    pub scores: &'a Scores,
    pub rule: &'a Rule,
}

/// Applies each item's rule to its weight in place, evaluating the scores as it goes (on CUDA,
/// batched: one read and one write of each weight, a handful of launches in all); returns each
/// mask when asked for, with the count pruned.
pub(crate) fn prune_many(
    items: &[PruneItem<'_>],
    want_mask: bool,
) -> Result<Vec<(Option<Tensor>, Count)>> {
    let mut out: Vec<Option<(Option<Tensor>, Count)>> = (0..items.len()).map(|_| None).collect();
    let cuda: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].weight.device().is_cuda())
        .collect();
    let mut devices: Vec<Device> = Vec::new();
    for &i in &cuda {
        if !devices.contains(&items[i].weight.device()) {
            devices.push(items[i].weight.device());
        }
    }
    for device in devices {
        let members: Vec<usize> = cuda
            .iter()
            .copied()
            .filter(|&i| items[i].weight.device() == device)
            .collect();
        let batch: Vec<cuda::Item<'_>> = members
            .iter()
            .map(|&i| cuda::Item {
                weight: items[i].weight,
                scores: items[i].scores,
                rule: items[i].rule,
            })
            .collect();
        for (i, r) in members.iter().zip(cuda::prune_many(&batch, want_mask)?) {
            out[*i] = Some(r);
        }
    }
    for (i, it) in items.iter().enumerate() {
        if out[i].is_none() {
            let (mask, pruned) = cpu::build_mask(it.scores, it.rule)?;
            cpu::apply_mask(it.weight, &mask)?;
            out[i] = Some((want_mask.then_some(mask), Count::Ready(pruned)));
        }
    }
    Ok(out.into_iter().map(|o| o.expect("filled")).collect())
}

fn check_mask(weight: &Tensor, mask: &Tensor) -> Result<()> {
    let need = mask_bytes(weight.numel()) as i64;
    if mask.kind() != Kind::Uint8 || mask.numel() as i64 != need || mask.device() != weight.device()
    {
        return Err(HostError::Shape {
            op: "apply mask",
            message: format!(
                "mask of {} {:?} bytes on {:?} does not fit a weight of {} elements on {:?} (needs {need} u8)",
                mask.numel(),
                mask.kind(),
                mask.device(),
                weight.numel(),
                weight.device()
            ),
        }.into());
    }
    Ok(())
}

/// Packs a bool/u8 keep-tensor (nonzero = keep) into the bit-mask layout, on its device.
pub(crate) fn pack_keep(keep: &Tensor) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let n = keep.numel() as i64;
    let padded = mask_bytes(n as usize) as i64 * 8;
    let flat = keep.f_reshape([-1])?.f_ne(0)?.f_to_kind(Kind::Uint8)?;
    let flat = if padded > n {
        flat.f_constant_pad_nd([0, padded - n])?
    } else {
        flat
    };
    let weights =
        Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).f_to_device(keep.device())?;
    Ok(flat.f_view([-1, 8])?.f_mul(&weights)?.f_sum_dim_intlist(
        Some(&[1i64][..]),
        false,
        Kind::Uint8,
    )?)
}

/// Unpacks a bit mask into a bool tensor of `numel` (true = keep), on its device.
pub(crate) fn unpack_keep(mask: &Tensor, numel: i64) -> Result<Tensor> {
    let _g = tch::no_grad_guard();
    let bits = Tensor::from_slice(&[1u8, 2, 4, 8, 16, 32, 64, 128]).f_to_device(mask.device())?;
    let expanded = mask
        .f_view([-1, 1])?
        .f_bitwise_and_tensor(&bits)?
        .f_ne(0)?
        .f_reshape([-1])?;
    Ok(expanded.f_narrow(0, 0, numel)?)
}

/// Whether per-step times and counters are asked for: `RUST_LOG=birdbone_tch::steps=trace`.
/// Each [`mark`] then waits for the device, which perturbs what it measures a little.
pub(crate) fn step_timing() -> bool {
    tracing::enabled!(target: "birdbone_tch::steps", tracing::Level::TRACE)
}

/// Whether a timeline of each pass is asked for: `RUST_LOG=birdbone_tch::timeline=trace`.
fn timeline() -> bool {
    tracing::enabled!(target: "birdbone_tch::timeline", tracing::Level::TRACE)
}

/// A timeline mark: its label, when the host passed it, and (on a GPU) an event recorded then.
type Mark = (String, std::time::Instant, Option<birdbone_cuda::Mark>);

/// Developer timing of the steps of a pass, as tracing events; with neither target enabled a
/// mark costs a check of two cached flags.
///
/// - Step timing (target `birdbone_tch::steps`, trace): each mark waits for `device` and logs
///   the wall time since the previous mark.
/// - Timeline (target `birdbone_tch::timeline`, trace): nothing waits; each mark notes the
///   host's time and records an event on the device's stream, and the pass's last mark
///   ("commit: masks and report") logs both clocks for every mark, so the gaps where the device
///   waited on the host show.
pub(crate) fn mark(device: Device, label: &str) {
    static LAST: parking_lot::Mutex<Option<std::time::Instant>> = parking_lot::Mutex::new(None);
    static MARKS: parking_lot::Mutex<Vec<Mark>> = parking_lot::Mutex::new(Vec::new());
    if timeline() {
        let event = match device {
            Device::Cuda(i) => {
                stream::register();
                birdbone_cuda::gpu(i).ok().and_then(|g| g.mark().ok())
            }
            _ => None,
        };
        let mut marks = MARKS.lock();
        // A pass starts afresh; marks of work outside passes (direct calls) do not pile up.
        if label == "(before the plan)" || marks.len() >= 1000 {
            marks.clear();
        }
        marks.push((label.to_string(), std::time::Instant::now(), event));
        if label == "commit: masks and report" {
            let (t0, e0) = (marks[0].1, marks[0].2.as_ref());
            let mut lines = String::from("ms since the first mark, host / device:");
            for (l, t, e) in marks.iter() {
                let dev = match (e0, e) {
                    (Some(a), Some(b)) => {
                        a.ms_until(b).map_or("?".to_string(), |x| format!("{x:.3}"))
                    }
                    _ => "-".to_string(),
                };
                lines.push_str(&format!(
                    "\n  {:8.3} / {dev:>8}  {l}",
                    (*t - t0).as_secs_f64() * 1e3
                ));
            }
            tracing::trace!(target: "birdbone_tch::timeline", "{lines}");
            marks.clear();
        }
        return;
    }
    if !step_timing() {
        return;
    }
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
    let now = std::time::Instant::now();
    let mut last = LAST.lock();
    if let Some(t) = *last {
        tracing::trace!(
            target: "birdbone_tch::steps",
            "{label}: {:.3} ms",
            (now - t).as_secs_f64() * 1e3
        );
    }
    *last = Some(now);
}

/// A column scale as the kernels read it: contiguous f32 starting on a 16-byte boundary (they load
/// four scales at a time). A view that starts elsewhere is copied.
pub(crate) fn aligned_scale(s: &Tensor) -> Result<Tensor> {
    let s = s.f_to_kind(Kind::Float)?.f_contiguous()?;
    Ok(if s.data_ptr() as usize % 16 == 0 {
        s
    } else {
        let mut copy = s.f_empty_like()?;
        copy.f_copy_(&s)?;
        copy
    })
}
