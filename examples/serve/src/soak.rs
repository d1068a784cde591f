//! The soak harness, without HTTP: clients generate from the shared model while re-prunes and
//! undos commit, and every answer must equal the greedy answer of one state the model passes
//! through. It reports the longest stall of a token step against the commit times.
//! `birdbone-serve-soak` runs it on the Mistral-7B shape (docs/serving.md); the CPU test in
//! tests/integration/serve.rs does the same through HTTP.

use std::{
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::Instant,
};

use serde::Serialize;
use serde_json::Value;

use crate::{engine::GenError, Core, Job, RepruneRequest};

/// What the soak did.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// The greedy answers (token ids) of the states the model passes through.
    pub states: Vec<Vec<i64>>,
    /// Requests answered.
    pub requests: usize,
    /// Requests that failed.
    pub failed: usize,
    /// Answers equal to none of the states' answers (a mix of two versions of the weights).
    pub mixed: usize,
    /// Re-prunes and undos committed while the clients ran.
    pub commits: usize,
    /// Generations started over because a commit landed mid-answer.
    pub restarts: u64,
    /// The longest any token step waited for the read lock, in seconds: the stall.
    pub longest_stall_seconds: f64,
    /// The longest a re-prune's commit held the write lock, in seconds.
    pub longest_commit_seconds: f64,
    /// The longest an undo held the write lock, in seconds.
    pub longest_undo_seconds: f64,
    /// The longest a commit or undo waited for the write lock (for the steps in flight).
    pub longest_write_wait_seconds: f64,
    /// Seconds planning each re-prune (no lock held).
    pub plan_seconds: Vec<f64>,
    /// The longest and the median time a request took, restarts included.
    pub longest_request_seconds: f64,
    pub median_request_seconds: f64,
    /// Seconds the whole soak took.
    pub seconds: f64,
}

/// Runs one job on the pruning thread and waits for it.
pub fn job(core: &Core, make: impl FnOnce(crate::pruning::Reply) -> Job) -> anyhow::Result<Value> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    core.jobs.send(make(tx))?;
    rx.blocking_recv()?
        .map_err(|e| anyhow::anyhow!("{} {}", e.status, e.message))
}

fn greedy(core: &Core, prompt: &[i64], max_new: usize) -> anyhow::Result<Vec<i64>> {
    let never = AtomicBool::new(false);
    match core.engine.generate_ids(prompt, max_new, &never) {
        Ok(g) => Ok(g.ids),
        Err(GenError::Cancelled) => anyhow::bail!("cancelled"),
        Err(GenError::Failed(m)) => anyhow::bail!(m),
    }
}

/// `clients` threads generate `max_new` tokens from `prompt` over and over, while the
/// re-prune `reprune` and an undo alternate `cycles` times, each commit after every client
/// could answer once since the previous one. The model must start in a state the re-prune
/// and the undo return to.
pub fn run(
    core: &Core,
    prompt: &[i64],
    max_new: usize,
    clients: usize,
    reprune: &RepruneRequest,
    cycles: usize,
) -> anyhow::Result<SoakReport> {
    let started = Instant::now();
    let reprune_job = || {
        let r = reprune.clone();
        job(core, move |tx| Job::Reprune(Box::new(r), tx))
    };
    // The answers of both states, and back: the undo must restore the first bit for bit.
    let before = greedy(core, prompt, max_new)?;
    reprune_job()?;
    let after = greedy(core, prompt, max_new)?;
    job(core, Job::Undo)?;
    anyhow::ensure!(
        greedy(core, prompt, max_new)? == before,
        "the undo did not restore the first state's answer"
    );
    let states = vec![before, after];
    let done = AtomicBool::new(false);
    let (requests, failed, mixed) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    );
    let mut plan_seconds = Vec::new();
    let latencies = parking_lot::Mutex::new(Vec::new());
    let restarts_before = core.engine.metrics.restarts.load(Ordering::Relaxed);
    let mut worst = (0f64, 0f64, 0f64); // commit hold, write wait, undo hold
    std::thread::scope(|s| -> anyhow::Result<()> {
        for _ in 0..clients {
            s.spawn(|| {
                let never = AtomicBool::new(false);
                // At least one answer each, then until the operator is done.
                loop {
                    let asked = Instant::now();
                    let answer = core.engine.generate_ids(prompt, max_new, &never);
                    latencies.lock().push(asked.elapsed().as_secs_f64());
                    match answer {
                        Ok(g) => {
                            if !states.contains(&g.ids) {
                                mixed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    requests.fetch_add(1, Ordering::Relaxed);
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                }
            });
        }
        let ops = (|| -> anyhow::Result<()> {
            let m = &core.engine.metrics;
            // Each commit waits until every client could answer once since the one before:
            // answers complete between commits, and commits still land mid-answer.
            let paced = |since: usize| {
                let limit = Instant::now() + std::time::Duration::from_secs(120);
                while requests.load(Ordering::Relaxed) < since + clients && Instant::now() < limit {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                requests.load(Ordering::Relaxed)
            };
            let mut seen = 0;
            for _ in 0..cycles {
                seen = paced(seen);
                let r = reprune_job()?;
                plan_seconds.push(r["plan_seconds"].as_f64().unwrap_or(f64::NAN));
                worst.0 = worst.0.max(m.last_write_hold_seconds.get());
                worst.1 = worst.1.max(m.last_write_wait_seconds.get());
                seen = paced(seen);
                job(core, Job::Undo)?;
                worst.2 = worst.2.max(m.last_write_hold_seconds.get());
                worst.1 = worst.1.max(m.last_write_wait_seconds.get());
            }
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        ops
    })?;
    let m = &core.engine.metrics;
    let mut latencies = latencies.into_inner();
    latencies.sort_by(f64::total_cmp);
    Ok(SoakReport {
        states,
        requests: requests.into_inner(),
        failed: failed.into_inner(),
        mixed: mixed.into_inner(),
        commits: 2 * cycles,
        restarts: m.restarts.load(Ordering::Relaxed) - restarts_before,
        longest_stall_seconds: m.longest_lock_wait(),
        longest_commit_seconds: worst.0,
        longest_undo_seconds: worst.2,
        longest_write_wait_seconds: worst.1,
        plan_seconds,
        longest_request_seconds: latencies.last().copied().unwrap_or(0.0),
        median_request_seconds: latencies.get(latencies.len() / 2).copied().unwrap_or(0.0),
        seconds: started.elapsed().as_secs_f64(),
    })
}
