//! The model as the server shares it: generation that never sees two versions of the weights,
//! the epoch every commit advances, and the activation statistics recorded from traffic.
//!
//! **The lock.** The weights are read by every generation and written only by the pruning
//! thread. A `parking_lot::RwLock<u64>` (the epoch) guards them logically: a generation takes
//! the read lock for each token step (one forward pass) and lets it go between steps; a commit
//! or an undo takes the write lock, writes, and advances the epoch. parking_lot's lock is fair:
//! once a writer waits, new readers queue behind it, so the writer waits at most one token step
//! of each generation in flight, and readers wait at most that plus the commit. Planning a pass
//! takes no lock at all (it only reads, and the only writer is the thread that plans).
//!
//! **One version per answer.** A generation notes the epoch of its first step. If a later step
//! finds another epoch (a commit landed between two steps), it starts over on the new weights,
//! so every answer comes entirely from the model before a commit or entirely after it.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use birdbone_llama::{ActivationSums, KvCache, Llama, StatsRecorder};
use birdbone_tch::ActivationStats;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use tch::Tensor;

use crate::metrics::Metrics;

/// The model and its tokenizer (none for a model of random weights driven by token ids).
pub struct Model {
    /// The decoder.
    pub llama: Llama,
    /// Its tokenizer.
    pub tokenizer: Option<tokenizers::Tokenizer>,
}

/// The model, shareable between threads.
struct Shared(Model);

// SAFETY: libtorch tensors may be read from several threads at once (a forward pass only reads
// the weights, and a plan only reads them too). They are written only by the pruning thread,
// while it holds the write lock of `Engine::gate`, which excludes every generation step; no
// plan runs then, because plans run on that same thread.
unsafe impl Sync for Shared {}

/// Why a generation gave no answer.
#[derive(Debug)]
pub enum GenError {
    /// The request was dropped (the client left, or its time ran out).
    Cancelled,
    /// The prompt or the model failed.
    Failed(String),
}

/// A generation's answer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generated {
    /// The new text (empty for a model without a tokenizer).
    pub text: String,
    /// The new tokens.
    pub ids: Vec<i64>,
    /// The epoch of the weights that produced every token.
    pub epoch: u64,
    /// Times it started over because a commit landed mid-answer.
    pub restarts: u32,
    /// The longest wait for the read lock of one token step, in seconds.
    pub longest_lock_wait: f64,
    /// Whether its activations were recorded.
    pub recorded: bool,
}

/// Activation statistics summed over the requests sampled from traffic.
#[derive(Default)]
struct Traffic {
    sums: ActivationSums,
    requests: u64,
    tokens: u64,
}

/// The shared model and everything the request handlers ask of it.
pub struct Engine {
    model: Shared,
    gate: RwLock<u64>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Record 1 request in this many (0: off).
    record_every: u64,
    requests: AtomicU64,
    traffic: Mutex<Traffic>,
}

impl Engine {
    /// Shares `model`; `record_every` > 0 records activation statistics of 1 request in that
    /// many.
    pub fn new(model: Model, record_every: u64, metrics: Arc<Metrics>) -> Engine {
        Engine {
            model: Shared(model),
            gate: RwLock::new(0),
            metrics,
            record_every,
            requests: AtomicU64::new(0),
            traffic: Mutex::new(Traffic::default()),
        }
    }

    /// The model. Readers other than generation steps (planning, sparsity) must run on the
    /// pruning thread, the only writer.
    pub fn model(&self) -> &Model {
        &self.model.0
    }

    /// The current epoch (commits and undos so far).
    pub fn epoch(&self) -> u64 {
        *self.gate.read()
    }

    /// The write lock: held only to write weights (a commit, an undo). Bump the epoch when the
    /// weights changed.
    pub fn write(&self) -> RwLockWriteGuard<'_, u64> {
        self.gate.write()
    }

    /// Whether traffic is recorded.
    pub fn records_traffic(&self) -> bool {
        self.record_every > 0
    }

    /// Encodes, generates greedily, decodes.
    pub fn generate_text(
        &self,
        prompt: &str,
        max_new: usize,
        cancel: &AtomicBool,
    ) -> Result<Generated, GenError> {
        let tok = self.model.0.tokenizer.as_ref().ok_or_else(|| {
            GenError::Failed("this model has no tokenizer: send token ids".into())
        })?;
        let ids: Vec<i64> = tok
            .encode(prompt, false)
            .map_err(|e| GenError::Failed(format!("cannot tokenize the prompt: {e}")))?
            .get_ids()
            .iter()
            .map(|&i| i as i64)
            .collect();
        let mut g = self.generate_ids(&ids, max_new, cancel)?;
        let new: Vec<u32> = g.ids.iter().map(|&i| i as u32).collect();
        g.text = tok
            .decode(&new, true)
            .map_err(|e| GenError::Failed(format!("cannot decode the answer: {e}")))?;
        Ok(g)
    }

    /// Greedy continuation of `prompt` (token ids) by up to `max_new` tokens, stopping at an
    /// end-of-sequence token, with a KV cache and a read lock per token step.
    pub fn generate_ids(
        &self,
        prompt: &[i64],
        max_new: usize,
        cancel: &AtomicBool,
    ) -> Result<Generated, GenError> {
        if prompt.is_empty() {
            return Err(GenError::Failed(
                "the prompt is empty (no tokens): give some text to continue".into(),
            ));
        }
        let fail = |e: &dyn std::fmt::Display| GenError::Failed(e.to_string());
        let _g = tch::no_grad_guard();
        let llama = &self.model.0.llama;
        let eos = llama.config.eos_ids();
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        let record = self.record_every > 0 && n.is_multiple_of(self.record_every);
        let started = Instant::now();
        let mut restarts = 0u32;
        let mut longest_wait = 0f64;
        'attempt: loop {
            let mut cache = KvCache::new();
            let mut recorder = record.then(StatsRecorder::new);
            let mut out: Vec<i64> = Vec::new();
            let mut epoch = None;
            let mut next = Tensor::from_slice(prompt)
                .f_unsqueeze(0)
                .and_then(|t| t.f_to_device(llama.device()))
                .map_err(|e| fail(&e))?;
            for _ in 0..max_new {
                if cancel.load(Ordering::Relaxed) {
                    return Err(GenError::Cancelled);
                }
                let asked = Instant::now();
                let gate = self.gate.read();
                let waited = asked.elapsed().as_secs_f64();
                longest_wait = longest_wait.max(waited);
                self.metrics.lock_wait(waited);
                if *epoch.get_or_insert(*gate) != *gate {
                    // A commit landed since the first step: start over on the new weights.
                    drop(gate);
                    restarts += 1;
                    self.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                    continue 'attempt;
                }
                let logits = llama
                    .forward(&next, Some(&mut cache), recorder.as_mut())
                    .map_err(|e| fail(&e))?;
                let last = logits
                    .f_select(1, -1)
                    .and_then(|l| l.f_argmax(-1, false))
                    .and_then(|l| l.f_int64_value(&[0]))
                    .map_err(|e| fail(&e))?;
                drop(gate);
                if eos.contains(&last) {
                    break;
                }
                out.push(last);
                next = Tensor::from_slice(&[last])
                    .f_unsqueeze(0)
                    .and_then(|t| t.f_to_device(llama.device()))
                    .map_err(|e| fail(&e))?;
            }
            let seconds = started.elapsed().as_secs_f64();
            self.metrics
                .generated(out.len() as u64, seconds, record, restarts);
            if let Some(rec) = recorder {
                let t = Instant::now();
                self.merge(rec, (prompt.len() + out.len()) as u64);
                self.metrics.merge_seconds(t.elapsed().as_secs_f64());
            }
            return Ok(Generated {
                text: String::new(),
                ids: out,
                epoch: epoch.unwrap_or_else(|| self.epoch()),
                restarts,
                longest_lock_wait: longest_wait,
                recorded: record,
            });
        }
    }

    fn merge(&self, rec: StatsRecorder, tokens: u64) {
        let _g = tch::no_grad_guard();
        let mut t = self.traffic.lock();
        for (name, (sq, n)) in rec.into_sums() {
            match t.sums.get_mut(&name) {
                Some((acc, count)) => {
                    if acc.f_add_(&sq).is_ok() {
                        *count += n;
                    }
                }
                None => {
                    t.sums.insert(name, (sq, n));
                }
            }
        }
        t.requests += 1;
        t.tokens += tokens;
        self.metrics
            .traffic(t.requests, t.tokens, t.sums.values().map(|(_, n)| *n).sum());
    }

    /// A copy of the statistics recorded from traffic so far, with the requests and tokens
    /// they cover; `None` before the first recorded request.
    pub fn traffic_stats(&self) -> Option<(ActivationStats, u64, u64)> {
        let _g = tch::no_grad_guard();
        let t = self.traffic.lock();
        if t.requests == 0 {
            return None;
        }
        let mut stats = ActivationStats::new();
        for (name, (sq, n)) in &t.sums {
            stats.insert(name.clone(), sq.copy(), *n);
        }
        Some((stats, t.requests, t.tokens))
    }
}

/// Sets a flag when dropped: a request handler holds one, and the generation it started stops
/// at its next token step once the handler is gone (the client left, or its time ran out).
pub struct CancelOnDrop(pub Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
