//! Square roots a scorer asks for inside a batch of scorer calls, run together in one launch
//! when the batch ends. Wanda takes `sqrt` of its activation statistics for every parameter: on
//! a 7B model that is 224 launches of a few microseconds of device time each, queued between
//! the selection kernels the batches feed, on the path the benchmark measures.
//!
//! A deferred result is a fresh tensor nothing has read yet. Every other host operation, every
//! hand-over of a tensor other than a fused score's column scale ([`crate::tensors::take`]),
//! and the end of the batch run the calling thread's pending roots first, so no reader on that
//! thread sees one unwritten: the order on the device is the order a plugin asked for them.
//! (A scorer runs on the thread that plans, and calls the host from it.)

use std::cell::{Cell, RefCell};

use tch::{Kind, Tensor};

use crate::{engine, error::Result};

/// Inputs of at most this many elements are deferred (activation statistics are one value per
/// input channel); larger ones gain nothing from sharing a launch.
const MAX_ELEMENTS: i64 = 1 << 18;

thread_local! {
    /// Whether this thread is inside [`batch`].
    static OPEN: Cell<bool> = const { Cell::new(false) };
    /// (input, output) pairs not yet computed, in the order they were asked for. Per thread:
    /// libtorch's current stream is per thread, and the roots must run on the stream of the
    /// thread that asked for them, before that thread uses them.
    static PENDING: RefCell<Vec<(Tensor, Tensor)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` (a batch of scorer calls) with deferral on for this thread, then runs whatever it
/// deferred, on success or not.
pub(crate) fn batch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let was = OPEN.with(|o| o.replace(true));
    let out = f();
    OPEN.with(|o| o.set(was));
    let flushed = flush();
    let v = out?;
    flushed?;
    Ok(v)
}

/// `sqrt(x)` into a new tensor, deferred when this thread is in a batch and `x` is a small
/// contiguous f32 CUDA tensor; `None` when not deferred (the caller computes it now).
pub(crate) fn sqrt(x: &Tensor) -> Result<Option<Tensor>> {
    if !OPEN.with(Cell::get)
        || !x.device().is_cuda()
        || x.kind() != Kind::Float
        || !x.is_contiguous()
        || x.numel() == 0
        || x.numel() as i64 > MAX_ELEMENTS
    {
        return Ok(None);
    }
    // The input may itself be a pending result: those run first (one launch runs its entries
    // side by side, so a chain would read an unwritten input).
    let chained = PENDING.with(|p| {
        p.borrow()
            .iter()
            .any(|(_, out)| out.data_ptr() == x.data_ptr())
    });
    if chained {
        flush()?;
    }
    let y = x.f_empty_like()?;
    PENDING.with(|p| p.borrow_mut().push((x.shallow_clone(), y.shallow_clone())));
    Ok(Some(y))
}

/// Computes every result this thread left pending, now (a no-op when none is).
pub(crate) fn flush() -> Result<()> {
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    if pending.is_empty() {
        return Ok(());
    }
    engine::sqrt_many(&pending)
}
