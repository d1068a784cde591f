//! The global selector: one exact threshold over every parameter of a pass.

use std::sync::Arc;

use birdbone_cuda::{Gpu, Source, BINS};
use birdbone_select::{GlobalSelection, ParamQuota};
use tch::{Device, Kind, Tensor};

use super::*;

pub(crate) struct CudaGlobal {
    pub(super) g: Arc<Gpu>,
    pub(super) device: Device,
    pub(super) k: u64,
    pub(super) params: usize,
    pub(super) n: u64,
    fit16: bool,
    /// The full histograms (a 256 KiB slot per parameter), allocated only when the band path is
    /// not taken: it needs none.
    pub(super) high: Option<Tensor>,
    pub(super) low: Option<Tensor>,
    pub(super) his: Option<Tensor>,
    /// Finiteness of the full histogram pass (allocated with it: the band path checks its own).
    pub(super) check: Option<Checked>,
    /// Fused scores held for one launch, with their sources (computed once: each costs a few
    /// libtorch calls).
    pub(super) pending: Vec<(usize, Scores, Source)>,
    pub(super) hi: Option<(usize, u64)>,
    pub(super) bad: Option<usize>,
    /// Set when a dense source was launched at once (the band path needs every source held).
    pub(super) streamed: bool,
    /// The answer of the band path, when it was taken.
    pub(super) banded: Option<GlobalSelection>,
}

pub(crate) fn global_selector(ordinal: usize, k: u64, params: usize) -> Result<Box<dyn GlobalSel>> {
    let device = Device::Cuda(ordinal);
    Ok(Box::new(CudaGlobal {
        g: gpu(ordinal)?,
        device,
        k,
        params,
        n: 0,
        fit16: true,
        high: None,
        low: None,
        his: None,
        check: None,
        pending: Vec::new(),
        hi: None,
        bad: None,
        streamed: false,
        banded: None,
    }))
}

impl CudaGlobal {
    pub(super) fn flush(&mut self, low: bool) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        let sources: Vec<(usize, Source)> = pending.iter().map(|(p, _, src)| (*p, *src)).collect();
        self.launch(&sources, low)
    }
    pub(super) fn high(&mut self) -> Result<Tensor> {
        if self.high.is_none() {
            self.high = Some(zeros((self.params * BINS) as i64, Kind::Int, self.device)?);
        }
        Ok(self.high.as_ref().expect("allocated above").shallow_clone())
    }
    pub(super) fn launch(&mut self, sources: &[(usize, Source)], low: bool) -> Result<()> {
        if sources.is_empty() {
            return Ok(());
        }
        if low {
            let his = self.his.as_ref().expect("set by needs_low_pass");
            launch_hist(
                &self.g,
                self.device,
                sources,
                self.low.as_ref().expect("set"),
                Pass::Low { his },
            )
        } else {
            let high = self.high()?;
            if self.check.is_none() {
                self.check = Some(Checked::new(self.params, self.device)?);
            }
            let check = self.check.as_ref().expect("set above");
            launch_hist(
                &self.g,
                self.device,
                sources,
                &high,
                Pass::High {
                    bad_flag: &check.flag,
                    bad_index: &check.index,
                },
            )
        }
    }
    pub(super) fn feed(&mut self, p: usize, scores: &Scores, low: bool) -> Result<()> {
        let s = readable(scores)?;
        let src = source(&s)?;
        if !low {
            self.n += src.n;
            self.fit16 &= keys_fit_16(&src);
        }
        match s {
            // Fused scores cost nothing to hold: batch them into one launch.
            s @ Scores::Magnitude { .. } => {
                self.pending.push((p, s, src));
                Ok(())
            }
            // Dense scores are launched now and may be dropped right after: the kernels run
            // in stream order before the allocator reuses their memory.
            s => {
                if !low && !self.streamed {
                    // The band path needs every source at hand: give it up, and histogram the
                    // fused sources held so far the full way.
                    self.streamed = true;
                    self.flush(false)?;
                }
                self.launch(&[(p, source(&s)?)], low)
            }
        }
    }
    pub(super) fn totals(&self, hists: &Tensor) -> Result<Vec<i64>> {
        let total = zeros(BINS as i64, Kind::Int64, self.device)?;
        self.g
            .sum_slots(Hists(ptr(hists)), self.params as u32, Totals(ptr(&total)))?;
        to_host_i64(&total)
    }
    pub(super) fn slot_counts(&self, hists: &Tensor, bin: usize) -> Result<(Vec<i64>, Vec<i64>)> {
        let at = zeros(self.params as i64, Kind::Int64, self.device)?;
        let below = zeros(self.params as i64, Kind::Int64, self.device)?;
        self.g.slot_counts(
            Hists(ptr(hists)),
            self.params as u32,
            bin as u32,
            CountsAt(ptr(&at)),
            CountsBelow(ptr(&below)),
        )?;
        Ok((to_host_i64(&at)?, to_host_i64(&below)?))
    }
}

impl GlobalSel for CudaGlobal {
    fn feed_high(&mut self, p: usize, scores: &Scores) -> Result<()> {
        self.feed(p, scores, false)
    }

    fn needs_low_pass(&mut self) -> Result<bool> {
        if !self.streamed && !self.pending.is_empty() {
            let sources: Vec<Source> = self.pending.iter().map(|(_, _, src)| *src).collect();
            if sources.iter().all(keys_fit_16)
                && sources
                    .iter()
                    .all(|s| (s.dt, s.kind) == (sources[0].dt, sources[0].kind))
            {
                let order: Vec<usize> = self.pending.iter().map(|(p, _, _)| *p).collect();
                match band_select(
                    &self.g,
                    self.device,
                    &sources,
                    std::slice::from_ref(&(0..sources.len())),
                    &[self.k],
                ) {
                    Ok(Some(quotas)) => {
                        // Quotas come in feed order; the selection reports them by parameter.
                        let mut params = vec![
                            ParamQuota {
                                threshold: 0,
                                below: 0,
                                ties: 0,
                                take: 0,
                                tie_cut: None,
                            };
                            self.params
                        ];
                        let threshold = quotas[0].threshold;
                        for (q, p) in quotas.into_iter().zip(order) {
                            params[p] = q;
                        }
                        self.banded = Some(GlobalSelection {
                            threshold,
                            pruned: self.k,
                            considered: self.n,
                            params,
                        });
                        self.pending.clear();
                        return Ok(false);
                    }
                    Ok(None) => {}
                    Err((slot, err)) => {
                        self.bad = slot.map(|i| order[i]);
                        return Err(err);
                    }
                }
            }
        }
        self.flush(false)?;
        if let Some((p, index)) = self
            .check
            .as_ref()
            .map(Checked::first_bad)
            .transpose()?
            .flatten()
        {
            self.bad = Some(p);
            return Err(HostError::NonFinite {
                what: "score",
                param: String::new(),
                index,
            }
            .into());
        }
        if self.k > self.n {
            birdbone_host::bail!("cannot select {} of {} weights", self.k, self.n);
        }
        if self.k == 0 {
            return Ok(false);
        }
        let high = self.high()?;
        let total = self.totals(&high)?;
        let (hi, before) = find_bin(&total, self.k);
        self.hi = Some((hi, before));
        if self.fit16 {
            return Ok(false);
        }
        self.low = Some(zeros((self.params * BINS) as i64, Kind::Int, self.device)?);
        self.his = Some(Tensor::f_full(
            [self.params as i64],
            hi as i64,
            (Kind::Int, self.device),
        )?);
        Ok(true)
    }

    fn feed_low(&mut self, p: usize, scores: &Scores) -> Result<()> {
        self.feed(p, scores, true)
    }

    fn finish(mut self: Box<Self>) -> Result<GlobalSelection> {
        if let Some(done) = self.banded.take() {
            return Ok(done);
        }
        let Some((hi, before_hi)) = self.hi else {
            let params = (0..self.params)
                .map(|_| ParamQuota {
                    threshold: 0,
                    below: 0,
                    ties: 0,
                    take: 0,
                    tie_cut: None,
                })
                .collect();
            return Ok(GlobalSelection {
                threshold: 0,
                pruned: 0,
                considered: self.n,
                params,
            });
        };
        let high = self.high()?;
        let (threshold, below, ties) = if self.low.is_none() {
            let (at, below) = self.slot_counts(&high, hi)?;
            ((hi as u32) << 16, below, at)
        } else {
            self.flush(true)?;
            let low = self.low.as_ref().expect("set");
            let (lo, _) = find_bin(&self.totals(low)?, self.k - before_hi);
            let (at, below_lo) = self.slot_counts(low, lo)?;
            let (_, below_hi) = self.slot_counts(&high, hi)?;
            (
                ((hi as u32) << 16) | lo as u32,
                below_hi.iter().zip(&below_lo).map(|(a, b)| a + b).collect(),
                at,
            )
        };
        let mut remaining = self.k - below.iter().map(|&b| b as u64).sum::<u64>();
        let params = (0..self.params)
            .map(|p| {
                let take = (ties[p] as u64).min(remaining);
                remaining -= take;
                ParamQuota {
                    threshold,
                    below: below[p] as u64,
                    ties: ties[p] as u64,
                    take,
                    tie_cut: None,
                }
            })
            .collect();
        Ok(GlobalSelection {
            threshold,
            pruned: self.k,
            considered: self.n,
            params,
        })
    }

    fn bad_param(&self) -> Option<usize> {
        self.bad
    }
}
