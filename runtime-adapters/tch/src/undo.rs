//! Taking a pass back. Before a commit writes a parameter, what it will overwrite is kept in
//! host memory (pinned for GPU parameters, so the copy back runs at full speed):
//!
//! - **Only the changed values** when the positions are known before the write (a decision
//!   that is a mask; on a GPU the commit turns every fused rule into its mask first): the
//!   mask's bits and the old values at the pruned positions. Gathering them takes temporaries
//!   of at most one parameter's size on the device: the staging is bounded by the largest
//!   parameter, not the model.
//! - **The whole weight** otherwise (on the CPU, where the engine decides positions while
//!   writing and a memcpy is the cheaper journal); compacted to the changed values after the
//!   commit when the pass is kept for undo and that is smaller.
//!
//! A failed commit restores every parameter it may have written from this journal, bit for bit.
//! A completed one hands the journal to the [`UndoHistory`], which keeps the last passes within
//! a memory limit so they can be taken back, newest first.

use std::collections::VecDeque;

use tch::{Device, Tensor};

use crate::{engine, error::Result};

/// What one parameter's write overwrote.
enum Saved {
    /// The weight as it was.
    Whole { target: Tensor, old: Tensor },
    /// Old values at flat positions `index` (int64).
    Indexed {
        target: Tensor,
        index: Tensor,
        old: Tensor,
    },
    /// The positions the write zeroed (keep bits, 1 = untouched) and their old values.
    Pruned {
        target: Tensor,
        keep_bits: Tensor,
        old: Tensor,
    },
}

fn bytes_of(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// Where a journal keeps what a commit overwrites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JournalPlace {
    /// Host memory (pinned for GPU parameters): costs no device memory; the first passes pay
    /// for pinning fresh host pages (libtorch's host allocator reuses them afterwards).
    #[default]
    Host,
    /// Beside the parameter, on its device: a device-to-device copy, for as much free device
    /// memory as the pass overwrites. Journals kept for undo move to the host when the pass
    /// completes. CPU parameters are kept in host memory either way.
    Device,
}

/// A copy of `t` where `place` says.
fn keep_copy(t: &Tensor, place: JournalPlace) -> Result<Tensor> {
    match place {
        // Queued on the stream before the writes that follow, like the host copy.
        JournalPlace::Device if t.device().is_cuda() => {
            let copy = t.f_empty_like()?;
            copy.shallow_clone().f_copy_(t)?;
            Ok(copy)
        }
        _ => to_host(t),
    }
}

/// A host tensor holding a copy of `t`: pinned when `t` is on a GPU.
fn to_host(t: &Tensor) -> Result<Tensor> {
    match t.device() {
        // A non-blocking copy to the CPU lands in pinned memory (libtorch allocates it so, from
        // its caching host allocator). It is queued on the stream before the writes that follow,
        // so it reads the values before they are overwritten; a restore is queued after it.
        Device::Cuda(_) => Ok(t.f_to_device_(Device::Cpu, t.kind(), true, false)?),
        _ => {
            let host = t.f_empty_like()?;
            host.shallow_clone().f_copy_(t)?;
            Ok(host)
        }
    }
}

impl Saved {
    fn bytes(&self) -> u64 {
        match self {
            Saved::Whole { old, .. } => bytes_of(old),
            Saved::Pruned { keep_bits, old, .. } => bytes_of(keep_bits) + bytes_of(old),
            Saved::Indexed { index, old, .. } => bytes_of(index) + bytes_of(old),
        }
    }

    fn restore(&self) -> Result<()> {
        let _g = tch::no_grad_guard();
        match self {
            Saved::Whole { target, old } => {
                target.shallow_clone().f_copy_(old)?;
            }
            Saved::Indexed { target, index, old } => {
                let dev = target.device();
                let mut flat = target.f_view([-1])?;
                let _ = flat.f_index_copy_(0, &index.f_to_device(dev)?, &old.f_to_device(dev)?)?;
            }
            Saved::Pruned {
                target,
                keep_bits,
                old,
            } => {
                let dev = target.device();
                let keep =
                    engine::unpack_keep(&keep_bits.f_to_device(dev)?, target.numel() as i64)?;
                let mut flat = target.f_view([-1])?;
                let _ = flat.f_masked_scatter_(&keep.f_logical_not()?, &old.f_to_device(dev)?)?;
            }
        }
        Ok(())
    }
}

/// The record of one commit: enough to put every parameter it wrote back as it was.
#[derive(Default)]
pub struct Journal {
    saved: Vec<Saved>,
    place: JournalPlace,
}

impl Journal {
    /// An empty journal that keeps its copies where `place` says.
    pub fn new(place: JournalPlace) -> Journal {
        Journal {
            saved: Vec::new(),
            place,
        }
    }

    /// Keeps the whole of `target` before a write to it.
    pub(crate) fn keep_whole(&mut self, target: &Tensor) -> Result<()> {
        let old = keep_copy(target, self.place)?;
        self.saved.push(Saved::Whole {
            target: target.shallow_clone(),
            old,
        });
        Ok(())
    }

    /// Keeps the values of `target` that `keep_bits` (packed, 1 = kept, on its device) will
    /// zero, before the write.
    pub(crate) fn keep_pruned(&mut self, target: &Tensor, keep_bits: &Tensor) -> Result<()> {
        if !target.is_contiguous() {
            return self.keep_whole(target);
        }
        let keep = engine::unpack_keep(keep_bits, target.numel() as i64)?;
        let gone = target
            .f_view([-1])?
            .f_masked_select(&keep.f_logical_not()?)?;
        self.saved.push(Saved::Pruned {
            target: target.shallow_clone(),
            keep_bits: keep_copy(keep_bits, self.place)?,
            old: keep_copy(&gone, self.place)?,
        });
        Ok(())
    }

    /// Keeps the values of `target` at flat positions `index` (int64, on its device) before a
    /// write to them (regrowth's swaps, say).
    pub fn keep_indexed(&mut self, target: &Tensor, index: &Tensor) -> Result<()> {
        if !target.is_contiguous() {
            return self.keep_whole(target);
        }
        let _g = tch::no_grad_guard();
        let old = target.f_reshape([-1])?.f_index_select(0, index)?;
        self.saved.push(Saved::Indexed {
            target: target.shallow_clone(),
            index: keep_copy(index, self.place)?,
            old: keep_copy(&old, self.place)?,
        });
        Ok(())
    }

    /// After a completed commit: CPU parameters kept whole become their changed values when
    /// that is smaller. `bits[i]` is the keep mask the pass wrote into the `i`-th parameter
    /// kept, when it has one.
    pub(crate) fn compact(&mut self, bits: &[Option<Tensor>]) {
        for (s, bits) in self.saved.iter_mut().zip(bits) {
            let Saved::Whole { target, old } = s else {
                continue;
            };
            if target.device() != Device::Cpu || !target.is_contiguous() || !old.is_contiguous() {
                continue;
            }
            let Some(bits) = bits else {
                continue;
            };
            let smaller = || -> Result<Option<Saved>> {
                let keep = engine::unpack_keep(bits, old.numel() as i64)?;
                let gone = old.f_view([-1])?.f_masked_select(&keep.f_logical_not()?)?;
                Ok(
                    (bytes_of(bits) + bytes_of(&gone) < bytes_of(old)).then(|| Saved::Pruned {
                        target: target.shallow_clone(),
                        keep_bits: bits.shallow_clone(),
                        old: gone,
                    }),
                )
            };
            match smaller() {
                Ok(Some(c)) => *s = c,
                Ok(None) => {}
                Err(e) => tracing::debug!("journal entry kept whole: {e}"),
            }
        }
    }

    /// The journal with every copy in host memory (what an undo history keeps).
    pub fn into_host(self) -> Result<Journal> {
        let to_host = |t: Tensor| -> Result<Tensor> {
            match t.device() {
                Device::Cpu => Ok(t),
                _ => to_host(&t),
            }
        };
        let saved = self
            .saved
            .into_iter()
            .map(|s| {
                Ok(match s {
                    Saved::Whole { target, old } => Saved::Whole {
                        target,
                        old: to_host(old)?,
                    },
                    Saved::Indexed { target, index, old } => Saved::Indexed {
                        target,
                        index: to_host(index)?,
                        old: to_host(old)?,
                    },
                    Saved::Pruned {
                        target,
                        keep_bits,
                        old,
                    } => Saved::Pruned {
                        target,
                        keep_bits: to_host(keep_bits)?,
                        old: to_host(old)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Journal {
            saved,
            place: JournalPlace::Host,
        })
    }

    /// Memory the journal holds (on the host, or on the device for [`JournalPlace::Device`]).
    pub fn bytes(&self) -> u64 {
        self.saved.iter().map(Saved::bytes).sum()
    }

    /// Parameters it can restore.
    pub fn len(&self) -> usize {
        self.saved.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.saved.is_empty()
    }

    /// Adds a later commit's record (of other parameters), so one restore takes both back.
    pub fn append(&mut self, later: Journal) {
        self.saved.extend(later.saved);
    }

    /// Puts every parameter back as it was before the commit, bit for bit. Tries them all and
    /// returns the first error.
    pub fn restore(&self) -> Result<()> {
        let mut first = None;
        for s in self.saved.iter().rev() {
            if let Err(e) = s.restore() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Whether commits keep a journal, and how many completed passes can be taken back.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UndoPolicy {
    /// Keep what a commit overwrites until it completes, and restore it if the commit fails.
    /// Turning it off saves the copy's time and host memory; a commit that then fails midway
    /// leaves the model partly pruned.
    pub rollback: bool,
    /// Completed passes that [`UndoHistory::undo`] can take back (0: none). Needs `rollback`.
    pub passes: usize,
    /// Host memory the kept passes may hold; the oldest are dropped past it.
    pub max_bytes: u64,
    /// Where the rollback journal is kept while a pass runs (see [`JournalPlace`]).
    pub journal: JournalPlace,
}

impl Default for UndoPolicy {
    /// Rollback on, no undo history.
    fn default() -> Self {
        UndoPolicy {
            rollback: true,
            passes: 0,
            max_bytes: u64::MAX,
            journal: JournalPlace::Host,
        }
    }
}

/// The journals of the last completed passes, newest last.
#[derive(Default)]
pub struct UndoHistory {
    passes: VecDeque<Journal>,
}

impl UndoHistory {
    /// Keeps `j` as the newest pass, then drops the oldest until `policy` holds.
    pub fn push(&mut self, j: Journal, policy: &UndoPolicy) {
        if policy.passes == 0 {
            return;
        }
        let j = match j.into_host() {
            Ok(j) => j,
            Err(e) => {
                tracing::warn!("a completed pass cannot be kept for undo (moving its journal to the host failed): {e}");
                return;
            }
        };
        self.passes.push_back(j);
        self.trim(policy);
    }

    /// The history within `policy`: the oldest passes dropped.
    pub(crate) fn trimmed(mut self, policy: &UndoPolicy) -> UndoHistory {
        self.trim(policy);
        self
    }

    fn trim(&mut self, policy: &UndoPolicy) {
        while self.passes.len() > policy.passes
            || (self.bytes() > policy.max_bytes && !self.passes.is_empty())
        {
            self.passes.pop_front();
        }
    }

    /// Takes the newest kept pass back. `Ok(false)` when none is kept. A restore that fails
    /// keeps the pass, to be tried again.
    pub fn undo(&mut self) -> Result<bool> {
        let Some(j) = self.passes.back() else {
            return Ok(false);
        };
        // Kept until the restore succeeded, so a failed one can be tried again.
        j.restore()?;
        self.passes.pop_back();
        Ok(true)
    }

    /// Passes that can be taken back.
    pub fn len(&self) -> usize {
        self.passes.len()
    }

    /// Whether none can.
    pub fn is_empty(&self) -> bool {
        self.passes.is_empty()
    }

    /// Host memory the kept passes hold.
    pub fn bytes(&self) -> u64 {
        self.passes.iter().map(Journal::bytes).sum()
    }

    /// Forgets every kept pass.
    pub fn clear(&mut self) {
        self.passes.clear();
    }
}

/// Test support: makes the next commit fail after it wrote `after` parameters (counted in
/// the order the commit writes them), as a device error would. Cleared once it fires.
#[doc(hidden)]
pub fn inject_commit_failure(after: Option<usize>) {
    FAIL_AFTER.with(|f| f.set(after));
}

thread_local! {
    static FAIL_AFTER: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Whether a failure is armed (the commit then writes one parameter at a time, so it can fail
/// between any two).
pub(crate) fn failure_armed() -> bool {
    FAIL_AFTER.with(|f| f.get().is_some())
}

/// Whether an injected failure is due after `written` parameters.
pub(crate) fn injected_failure(written: usize) -> Result<()> {
    FAIL_AFTER.with(|f| match f.get() {
        Some(n) if written >= n => {
            f.set(None);
            Err(crate::Error::Host(birdbone_host::Error::Invalid(format!(
                "injected commit failure after {written} parameters (test)"
            ))))
        }
        _ => Ok(()),
    })
}
