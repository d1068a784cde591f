//! The pruning thread: re-prunes, undos and plugin reloads, one at a time, in the order asked.
//! It is the only writer of the weights. It plans with no lock held (generation goes on) and
//! takes the write lock only to commit or undo; the commit's undo journal is kept before it.

use std::{path::PathBuf, sync::Arc, time::Instant};

use birdbone_host::recipe::{ComponentSpec, NmPattern};
use birdbone_host::Recipe;
use birdbone_tch::{
    selected, ActivationStats, JournalPlace, ParamFilter, PassInputs, PluginRegistry, Pruner,
    UndoHistory, UndoPolicy,
};
use crossbeam::channel::{Receiver, Sender};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::{engine::Engine, http::ApiError};

/// Which activation statistics a re-prune scores with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Statistics {
    /// Those of the calibration text at warm-up.
    #[default]
    Warmup,
    /// Those recorded from the requests served (`--record-activations`).
    Traffic,
}

fn magnitude() -> ComponentSpec {
    ComponentSpec::named("magnitude")
}

fn global() -> ComponentSpec {
    ComponentSpec::named("global")
}

/// `POST /v1/admin/reprune`: the recipe's pruning part. Unknown fields are refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepruneRequest {
    /// The scorer: a name, or `{name, params}` (default `magnitude`).
    #[serde(default = "magnitude")]
    pub scorer: ComponentSpec,
    /// The strategy: a name, or `{name, params}` (default `global`).
    #[serde(default = "global")]
    pub strategy: ComponentSpec,
    /// Share of the selected weights to prune, in [0, 1] (needed unless `pattern` is given).
    #[serde(default)]
    pub sparsity: Option<f64>,
    /// An N:M pattern, "N:M".
    #[serde(default)]
    pub pattern: Option<NmPattern>,
    /// Parameters to prune (the recipe's patterns; default: the blocks' Linear weights).
    #[serde(default)]
    pub include: Vec<String>,
    /// Parameters never to prune.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// `warmup` (default) or `traffic`.
    #[serde(default)]
    pub statistics: Statistics,
}

impl RepruneRequest {
    /// The request as a recipe, checked.
    pub fn recipe(&self) -> Result<Recipe, ApiError> {
        let sparsity = match (self.sparsity, self.pattern) {
            (Some(s), _) => s,
            (None, Some(p)) => 1.0 - p.n as f64 / p.m as f64,
            (None, None) => {
                return Err(ApiError::bad_request(
                    "give a sparsity (0 to 1) or an N:M pattern",
                ))
            }
        };
        let recipe = Recipe {
            scorer: self.scorer.clone(),
            strategy: self.strategy.clone(),
            sparsity,
            pattern: self.pattern,
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            ..Recipe::default()
        };
        recipe
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(recipe)
    }
}

/// The answer to a job.
pub type Reply = oneshot::Sender<Result<Value, ApiError>>;

/// Work for the pruning thread.
pub enum Job {
    /// A re-prune.
    Reprune(Box<RepruneRequest>, Reply),
    /// Take the newest kept pass back.
    Undo(Reply),
    /// Rescan the live plugin folder.
    Reload(Reply),
}

/// What the pruning thread owns.
pub struct Worker {
    /// The model.
    pub engine: Arc<Engine>,
    /// The plugins.
    pub registry: Arc<Mutex<PluginRegistry>>,
    /// The live plugin folder.
    pub plugins: PathBuf,
    /// Warm-up statistics.
    pub warmup: ActivationStats,
    /// Passes that can be taken back.
    pub history: UndoHistory,
    /// How many.
    pub policy: UndoPolicy,
    /// The components and versions, as `/v1/status` shows them (refreshed on reloads).
    pub components: Arc<Mutex<Value>>,
}

/// The components of a registry, for `/v1/status`.
pub fn components_json(reg: &PluginRegistry) -> Value {
    Value::Array(
        reg.components()
            .map(|c| {
                json!({
                    "name": c.info.name.as_str(),
                    "kind": birdbone_host::Role::of(c.info).name(),
                    "version": c.plugin.manifest.version.as_str(),
                    "plugin": c.plugin.path.display().to_string(),
                })
            })
            .collect(),
    )
}

/// The share of zeros among the Linear weights. Reads weights: pruning thread only.
pub fn sparsity(engine: &Engine) -> anyhow::Result<f64> {
    let weights = selected(engine.model().llama.var_store(), &ParamFilter::default())?;
    let _g = tch::no_grad_guard();
    let (mut zeros, mut total) = (0i64, 0i64);
    for (_, w) in &weights {
        zeros += w.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
        total += w.numel() as i64;
    }
    Ok(zeros as f64 / total.max(1) as f64)
}

impl Worker {
    /// Runs jobs until every sender is gone.
    pub fn run(mut self, jobs: Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            let started = Instant::now();
            match job {
                Job::Reprune(req, reply) => {
                    let answer = self.reprune(&req);
                    tracing::info!(
                        ok = answer.is_ok(),
                        seconds = started.elapsed().as_secs_f64(),
                        "re-prune"
                    );
                    let _ = reply.send(answer);
                }
                Job::Undo(reply) => {
                    let _ = reply.send(self.undo());
                }
                Job::Reload(reply) => {
                    let _ = reply.send(Ok(self.reload()));
                }
            }
        }
    }

    fn reprune(&mut self, req: &RepruneRequest) -> Result<Value, ApiError> {
        let recipe = req.recipe()?;
        let mut pass = recipe.pass_config();
        pass.keep_masks = false;
        let (mut pruner, versions) = {
            let reg = self.registry.lock();
            let pruner = Pruner::from_recipe(&reg, &recipe)
                .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
            let v = |n: &str| reg.version_of(n).unwrap_or("?").to_string();
            (pruner, (v(&recipe.scorer.name), v(&recipe.strategy.name)))
        };
        let traffic;
        let (stats, covered) = match req.statistics {
            Statistics::Warmup => (&self.warmup, Value::Null),
            Statistics::Traffic => {
                if !self.engine.records_traffic() {
                    return Err(ApiError::conflict("no traffic statistics: this server does not record them (start it with --record-activations)"));
                }
                let Some((s, requests, tokens)) = self.engine.traffic_stats() else {
                    return Err(ApiError::conflict(
                        "no traffic statistics yet: no recorded request has been answered",
                    ));
                };
                traffic = s;
                (&traffic, json!({"requests": requests, "tokens": tokens}))
            }
        };
        let metrics = &self.engine.metrics;
        // Planning reads the weights with no lock held: this thread is their only writer.
        let started = Instant::now();
        let plan = pruner
            .plan(
                self.engine.model().llama.var_store(),
                &pass,
                PassInputs {
                    stats: Some(stats),
                    ..Default::default()
                },
            )
            .map_err(|e| {
                ApiError::unprocessable(format!("planning failed, nothing changed: {e:#}"))
            })?;
        let plan_seconds = started.elapsed().as_secs_f64();
        metrics.last_plan_seconds.set(plan_seconds);
        // The undo journal too (a copy of what the commit overwrites) is kept with no lock
        // held: readers then wait for the writes alone.
        let plan = plan.journal_ahead(JournalPlace::Host).map_err(|e| {
            ApiError::internal(format!(
                "keeping the undo journal failed, nothing changed: {e:#}"
            ))
        })?;
        let asked = Instant::now();
        let mut epoch = self.engine.write();
        let (wait, held) = (asked.elapsed().as_secs_f64(), Instant::now());
        let committed = plan.commit();
        if committed.is_ok() {
            *epoch += 1;
        }
        let now = *epoch;
        drop(epoch);
        let hold = held.elapsed().as_secs_f64();
        self.wrote(wait, hold, now);
        let (report, _, journal) = committed.map_err(|e| {
            ApiError::internal(format!("the commit failed and was rolled back: {e:#}"))
        })?;
        metrics
            .commits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.history.push(journal, &self.policy);
        let sp = self.refresh_sparsity();
        Ok(json!({
            "scorer": report.scorer,
            "scorer_version": versions.0,
            "strategy": report.strategy,
            "strategy_version": versions.1,
            "pruned": report.pruned,
            "total": report.total,
            "sparsity": sp,
            "statistics": req.statistics,
            "traffic": covered,
            "epoch": now,
            "plan_seconds": plan_seconds,
            "journal_seconds": report.journal_seconds,
            "write_wait_seconds": wait,
            "commit_seconds": hold,
            "undoable": self.history.len(),
        }))
    }

    fn wrote(&self, wait: f64, hold: f64, epoch: u64) {
        let m = &self.engine.metrics;
        m.last_write_wait_seconds.set(wait);
        m.last_write_hold_seconds.set(hold);
        m.max_write_hold_seconds.max(hold);
        m.epoch.store(epoch, std::sync::atomic::Ordering::Relaxed);
    }

    fn refresh_sparsity(&self) -> f64 {
        let sp = sparsity(&self.engine).unwrap_or(f64::NAN);
        self.engine.metrics.sparsity.set(sp);
        sp
    }

    fn undo(&mut self) -> Result<Value, ApiError> {
        let asked = Instant::now();
        let mut epoch = self.engine.write();
        let (wait, held) = (asked.elapsed().as_secs_f64(), Instant::now());
        let undone = self.history.undo();
        if matches!(undone, Ok(true)) {
            *epoch += 1;
        }
        let now = *epoch;
        drop(epoch);
        self.wrote(wait, held.elapsed().as_secs_f64(), now);
        let undone = undone.map_err(|e| ApiError::internal(format!("undo failed: {e:#}")))?;
        if undone {
            self.engine
                .metrics
                .undos
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let sp = self.refresh_sparsity();
        Ok(json!({"undone": undone, "sparsity": sp, "undoable": self.history.len(), "epoch": now}))
    }

    fn reload(&mut self) -> Value {
        let mut reg = self.registry.lock();
        let s = reg.load_dir(&self.plugins);
        *self.components.lock() = components_json(&reg);
        for r in &s.rejected {
            tracing::warn!(path = %r.path.display(), reason = %r.reason, "plugin refused");
        }
        json!({
            "loaded": s.loaded,
            "upgraded": s.upgraded,
            "rejected": s.rejected,
            "components": components_json(&reg),
            "seconds": s.seconds,
        })
    }
}

/// Sends a job and waits for its answer.
pub async fn ask(jobs: &Sender<Job>, job: impl FnOnce(Reply) -> Job) -> Result<Value, ApiError> {
    let (tx, rx) = oneshot::channel();
    jobs.send(job(tx))
        .map_err(|_| ApiError::unavailable("the pruning thread has stopped"))?;
    rx.await
        .map_err(|_| ApiError::unavailable("the pruning thread has stopped"))?
}
