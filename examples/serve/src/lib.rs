//! A model server around a live Birdbone-pruned model, on HTTP (axum on hyper and tokio).
//!
//! - **Warm-up**: calibration text runs through the model to collect activation statistics,
//!   then the model is pruned in place through the plugins, then the server starts answering.
//! - **Serving**: `POST /v1/generate` (`{"prompt": "...", "max_new_tokens": 16}`), typed JSON
//!   with unknown fields refused, within limits on body size, tokens, connections, idle and
//!   request time ([`Limits`]). Generation takes the model's read lock per token step
//!   ([`engine`] explains the lock).
//! - **Re-pruning live**: `POST /v1/admin/reprune` with the recipe's pruning fields
//!   ([`pruning::RepruneRequest`]), behind a bearer token. The pass is planned with no lock
//!   held and committed under the write lock: no request waits for a plan, none sees
//!   half-pruned weights, and each answer comes from one version of the weights.
//! - **Taking a pass back**: `POST /v1/admin/undo` restores the newest kept pass, bit for bit
//!   (up to [`UNDO_PASSES`]).
//! - **Plugins**: `POST /v1/admin/plugins/reload` rescans the live folder: new plugins load
//!   after the trust checks, a newer version of a component replaces the older for later
//!   passes, anything refused is reported, and the server keeps serving.
//! - **Traffic statistics**: with [`ServeConfig::record_activations`], 1 request in N records
//!   its activation statistics, and a re-prune may score with them (`"statistics": "traffic"`).
//! - `GET /healthz`, `GET /metrics` (Prometheus text), `GET /v1/status`.
//!
//! docs/serving.md has the whole story.

pub mod client;
pub mod engine;
pub mod http;
mod listen;
pub mod metrics;
pub mod pruning;
pub mod soak;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use birdbone_llama::{collect_stats, token_windows, Loaded};
use birdbone_tch::{
    ActivationStats, PassConfig, PassInputs, PluginRegistry, Pruner, UndoHistory, UndoPolicy,
};
use crossbeam::channel::{unbounded, Sender};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;

pub use birdbone_host::TrustPolicy;
pub use engine::{Engine, Model};
pub use pruning::{Job, RepruneRequest, Statistics};

/// Passes the server can take back (`POST /v1/admin/undo`), newest first.
pub const UNDO_PASSES: usize = 4;

/// The environment variable holding the admin token.
pub const TOKEN_ENV: &str = "BIRDBONE_SERVE_TOKEN";

/// What one client may ask of the server, and how long it may take.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Largest `max_new_tokens` (400 above).
    pub max_new_tokens: u32,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Generations running at once; more wait (within their request time).
    pub max_generations: usize,
    /// How long a connection may wait for (or take sending) a request head: idle keep-alive
    /// connections and slow headers are closed after it.
    pub idle_time: Duration,
    /// How long a public request may take, body and waiting included (408 after).
    pub request_time: Duration,
    /// How long an admin request may take before its answer is given up (the job finishes).
    pub admin_time: Duration,
    /// How long shutdown waits for requests in flight.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: 64 * 1024,
            max_new_tokens: 256,
            max_connections: 256,
            max_generations: 4,
            idle_time: Duration::from_secs(10),
            request_time: Duration::from_secs(120),
            admin_time: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model folder or cached hub id.
    pub model: String,
    /// The live plugin folder (rescanned by `POST /v1/admin/plugins/reload`).
    pub plugins: PathBuf,
    /// More plugin folders loaded once at start (the built-ins, say).
    pub extra_plugins: Vec<PathBuf>,
    /// What a plugin file must pass (`None`: [`TrustPolicy::from_env`]).
    pub trust: Option<TrustPolicy>,
    /// Address to listen on (port 0 picks one).
    pub addr: SocketAddr,
    /// Calibration text (file path) for warm-up statistics.
    pub calibration_text: PathBuf,
    /// Calibration windows and their length in tokens.
    pub calibration: (usize, usize),
    /// Warm-up pruning: scorer, strategy, strategy settings, sparsity.
    pub warmup: Option<(String, String, BTreeMap<String, String>, f64)>,
    /// Device and element type of the model.
    pub device: tch::Device,
    /// Element type.
    pub kind: tch::Kind,
    /// The limits.
    pub limits: Limits,
    /// The admin token (`None`: the admin endpoints are disabled).
    pub admin_token: Option<String>,
    /// Record the activation statistics of 1 request in this many (0: never).
    pub record_activations: u64,
    /// Stop on SIGTERM and ctrl-c (the binary; not tests).
    pub handle_signals: bool,
}

/// What warm-up did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WarmupReport {
    /// Seconds loading the model.
    pub load_seconds: f64,
    /// Seconds of calibration traffic.
    pub calibration_seconds: f64,
    /// Seconds pruning (plan + commit).
    pub prune_seconds: f64,
    /// Sparsity of the Linear weights after warm-up.
    pub sparsity: f64,
}

/// The model, its pruning thread and its plugins, without HTTP (what the soak harness drives).
pub struct Core {
    /// The model.
    pub engine: Arc<Engine>,
    /// Jobs for the pruning thread.
    pub jobs: Sender<Job>,
    /// What warm-up did.
    pub warmup: WarmupReport,
    /// Components and versions, for `/v1/status`.
    pub components: Arc<Mutex<Value>>,
    /// The pruning thread (it ends when every job sender is gone).
    pub worker: JoinHandle<()>,
}

/// Calibrates `model` on `windows`, prunes it as `warmup` says, and starts the pruning thread.
pub fn build_core(
    model: Model,
    windows: &[Vec<i64>],
    mut registry: PluginRegistry,
    plugins: PathBuf,
    warmup: Option<&(String, String, BTreeMap<String, String>, f64)>,
    record_activations: u64,
    load_seconds: f64,
) -> anyhow::Result<Core> {
    let t1 = Instant::now();
    let stats = ActivationStats::from(collect_stats(&model.llama, windows, 4)?.0);
    let calibration_seconds = t1.elapsed().as_secs_f64();
    registry.load_dir(&plugins);
    let policy = UndoPolicy {
        passes: UNDO_PASSES,
        ..Default::default()
    };
    let t2 = Instant::now();
    let mut history = UndoHistory::default();
    if let Some((scorer, strategy, settings, s)) = warmup {
        let mut pruner = Pruner::new(&registry, scorer, &BTreeMap::new(), strategy, settings)?;
        pruner.set_undo(policy)?;
        let pass = PassConfig {
            sparsity: *s,
            ..Default::default()
        };
        let inputs = PassInputs {
            stats: Some(&stats),
            ..Default::default()
        };
        pruner.run(model.llama.var_store(), &pass, inputs)?;
        history = pruner.take_history();
    }
    let prune_seconds = t2.elapsed().as_secs_f64();
    let metrics = Arc::new(metrics::Metrics::default());
    let engine = Arc::new(Engine::new(model, record_activations, metrics.clone()));
    let sparsity = pruning::sparsity(&engine)?;
    metrics.sparsity.set(sparsity);
    let components = Arc::new(Mutex::new(pruning::components_json(&registry)));
    let (jobs, rx) = unbounded();
    let worker = pruning::Worker {
        engine: engine.clone(),
        registry: Arc::new(Mutex::new(registry)),
        plugins,
        warmup: stats,
        history,
        policy,
        components: components.clone(),
    };
    let worker = std::thread::Builder::new()
        .name("birdbone-prune".into())
        .spawn(move || worker.run(rx))?;
    Ok(Core {
        engine,
        jobs,
        warmup: WarmupReport {
            load_seconds,
            calibration_seconds,
            prune_seconds,
            sparsity,
        },
        components,
        worker,
    })
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What warm-up did.
    pub warmup: WarmupReport,
    stop: watch::Sender<bool>,
    thread: JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets the requests in flight finish (within the shutdown grace), stops
    /// the pruning thread after its current job, and joins every thread.
    pub fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.thread.join();
    }

    /// Waits until the server stops (on SIGTERM or ctrl-c with `handle_signals`).
    pub fn wait(self) {
        let _ = self.thread.join();
    }
}

/// Loads the model, warms it up (calibration, pruning), and starts serving.
pub fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
    let t0 = Instant::now();
    let loaded = Loaded::load(&cfg.model, cfg.device, cfg.kind)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&cfg.calibration_text)?;
    let windows = token_windows(
        &loaded.tokenizer,
        &text,
        cfg.calibration.1,
        cfg.calibration.0,
    )?;
    let mut registry =
        PluginRegistry::with_policy(cfg.trust.clone().unwrap_or_else(TrustPolicy::from_env));
    for d in &cfg.extra_plugins {
        registry.load_dir(d);
    }
    let model = Model {
        llama: loaded.model,
        tokenizer: Some(loaded.tokenizer),
    };
    let core = build_core(
        model,
        &windows,
        registry,
        cfg.plugins.clone(),
        cfg.warmup.as_ref(),
        cfg.record_activations,
        load_seconds,
    )?;
    serve_core(core, &cfg)
}

/// Serves `core` over HTTP as `cfg` says.
pub fn serve_core(core: Core, cfg: &ServeConfig) -> anyhow::Result<Server> {
    let limits = cfg.limits;
    let listener = std::net::TcpListener::bind(cfg.addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(limits.max_generations + 4)
        .thread_name("birdbone-serve")
        .enable_all()
        .build()?;
    let app = http::App {
        engine: core.engine.clone(),
        jobs: core.jobs,
        token: cfg.admin_token.as_deref().map(Arc::from),
        limits,
        generations: Arc::new(tokio::sync::Semaphore::new(limits.max_generations.max(1))),
        components: core.components,
    };
    let (stop, stopped) = watch::channel(false);
    let signals = cfg.handle_signals.then(|| stop.clone());
    let (metrics, worker) = (core.engine.metrics.clone(), core.worker);
    let thread = std::thread::Builder::new()
        .name("birdbone-serve".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("a listener");
                if let Some(stop) = signals {
                    tokio::spawn(async move {
                        shutdown_signal().await;
                        tracing::info!("shutting down: requests in flight finish first");
                        let _ = stop.send(true);
                    });
                }
                listen::serve(listener, http::router(app), limits, metrics, stopped).await;
            });
            runtime.shutdown_timeout(limits.shutdown_grace);
            // Every job sender is gone with the router: the pruning thread ends.
            let _ = worker.join();
        })?;
    Ok(Server {
        addr,
        warmup: core.warmup,
        stop,
        thread,
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
