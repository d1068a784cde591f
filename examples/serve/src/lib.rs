//! A small model server around a live Birdbone-pruned model.
//!
//! - **Warm-up**: calibration text runs through the model to collect activation statistics,
//!   then the model is pruned in place through the plugins, then the server starts answering.
//! - **Serving**: a pool of worker threads answers line-delimited JSON requests on a local TCP
//!   port (`{"op": "generate", "prompt": "...", "max_new": 16}`), each generation holding a read
//!   lock on the model.
//! - **Re-pruning live**: `{"op": "reprune", "scorer": ..., "strategy": ..., "sparsity": ...}`
//!   rescans the plugin folder (so a plugin copied in while the server runs is picked up, without
//!   a restart), then prunes on a background thread: it plans under an upgradable read lock
//!   (generation goes on), and commits under the write lock, so requests in flight finish first
//!   and no request ever sees half-pruned weights.
//! - **Taking a pass back**: `{"op": "undo"}` restores, under the write lock, the weights of the
//!   newest pass still kept (the warm-up's and the last re-prunes', up to
//!   [`UNDO_PASSES`]), bit for bit.
//! - `{"op": "status"}` reports the sparsity of the model and the loaded components.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use birdbone_llama::{collect_stats, generate_greedy, token_windows, Loaded};
use birdbone_tch::{
    selected, ActivationStats, ParamFilter, PassConfig, PassInputs, PluginRegistry, Pruner,
    UndoHistory, UndoPolicy,
};
use crossbeam::channel::{bounded, unbounded, Sender};
use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard};
use serde_json::{json, Value};

/// The model, shareable between threads.
struct Shared(Loaded);

// SAFETY: libtorch tensors may be read from several threads at once (a forward pass only reads
// the weights); every write to them happens under the write lock of the `RwLock` around this
// value, which excludes all readers.
unsafe impl Sync for Shared {}

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model folder or cached hub id.
    pub model: String,
    /// The live plugin folder (rescanned on every re-prune).
    pub plugins: PathBuf,
    /// More plugin folders loaded once at start (the built-ins, say).
    pub extra_plugins: Vec<PathBuf>,
    /// Address to listen on (port 0 picks one).
    pub addr: SocketAddr,
    /// Worker threads answering requests.
    pub threads: usize,
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

/// Passes the server can take back (`{"op": "undo"}`), newest first.
pub const UNDO_PASSES: usize = 4;

/// Work for the pruning thread.
enum Job {
    Reprune(Reprune),
    Undo(Sender<Value>),
}

struct Reprune {
    scorer: String,
    strategy: String,
    settings: BTreeMap<String, String>,
    sparsity: f64,
    nm: Option<(u32, u32)>,
    reply: Sender<Value>,
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What warm-up did.
    pub warmup: WarmupReport,
    /// Requests answered so far.
    pub served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Stops accepting, lets workers finish, and joins every thread.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the acceptor
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn sparsity(model: &Loaded) -> anyhow::Result<f64> {
    let weights = selected(model.model.var_store(), &ParamFilter::default())?;
    let _g = tch::no_grad_guard();
    let (mut zeros, mut total) = (0i64, 0i64);
    for (_, w) in &weights {
        zeros += w.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]);
        total += w.numel() as i64;
    }
    Ok(zeros as f64 / total.max(1) as f64)
}

/// Loads the model, warms it up (calibration, pruning), and starts serving.
pub fn start(cfg: ServeConfig) -> anyhow::Result<Server> {
    let t0 = Instant::now();
    let loaded = Loaded::load(&cfg.model, cfg.device, cfg.kind)?;
    let load_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let text = std::fs::read_to_string(&cfg.calibration_text)?;
    let windows = token_windows(
        &loaded.tokenizer,
        &text,
        cfg.calibration.1,
        cfg.calibration.0,
    )?;
    let stats = ActivationStats::from(collect_stats(&loaded.model, &windows, 4)?.0);
    let calibration_seconds = t1.elapsed().as_secs_f64();
    let mut registry = PluginRegistry::new();
    for d in &cfg.extra_plugins {
        registry.load_dir(d);
    }
    registry.load_dir(&cfg.plugins);
    let t2 = Instant::now();
    let undo_policy = UndoPolicy {
        passes: UNDO_PASSES,
        ..Default::default()
    };
    let mut history = UndoHistory::default();
    if let Some((scorer, strategy, settings, s)) = &cfg.warmup {
        let mut pruner = Pruner::new(&registry, scorer, &BTreeMap::new(), strategy, settings)?;
        pruner.set_undo(undo_policy)?;
        let pass = PassConfig {
            sparsity: *s,
            ..Default::default()
        };
        pruner.run(
            loaded.model.var_store(),
            &pass,
            PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )?;
        history = pruner.take_history();
    }
    let prune_seconds = t2.elapsed().as_secs_f64();
    let warmup = WarmupReport {
        load_seconds,
        calibration_seconds,
        prune_seconds,
        sparsity: sparsity(&loaded)?,
    };

    let model = Arc::new(RwLock::new(Shared(loaded)));
    let registry = Arc::new(Mutex::new(registry));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let listener = TcpListener::bind(cfg.addr)?;
    let addr = listener.local_addr()?;
    let mut threads = Vec::new();

    // The background pruner: re-prune jobs arrive over a channel and run one at a time.
    let (prune_tx, prune_rx) = unbounded::<Job>();
    {
        // The statistics stay with the pruning thread, their only user.
        let (model, registry, plugins, stop) = (
            model.clone(),
            registry.clone(),
            cfg.plugins.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(job) = prune_rx.recv_timeout(Duration::from_millis(50)) else {
                    continue;
                };
                let failed = |e: anyhow::Error| json!({"ok": false, "error": format!("{e:#}")});
                match job {
                    Job::Reprune(job) => {
                        let answer = reprune(
                            &model,
                            &registry,
                            &stats,
                            &plugins,
                            &job,
                            &mut history,
                            &undo_policy,
                        )
                        .unwrap_or_else(failed);
                        let _ = job.reply.send(answer);
                    }
                    Job::Undo(reply) => {
                        let answer = undo(&model, &mut history).unwrap_or_else(failed);
                        let _ = reply.send(answer);
                    }
                }
            }
        }));
    }

    // Workers take connections from the acceptor.
    let (conn_tx, conn_rx) = unbounded::<TcpStream>();
    for _ in 0..cfg.threads.max(1) {
        let (conn_rx, model, registry, prune_tx, served, stop) = (
            conn_rx.clone(),
            model.clone(),
            registry.clone(),
            prune_tx.clone(),
            served.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while let Ok(stream) = conn_rx.recv() {
                let _ = handle(stream, &model, &registry, &prune_tx, &served, &stop);
            }
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = stream {
                    let _ = conn_tx.send(s);
                }
            }
            // Dropping the sender lets the workers drain and exit.
        }));
    }
    Ok(Server {
        addr,
        warmup,
        served,
        stop,
        threads,
    })
}

fn handle(
    stream: TcpStream,
    model: &RwLock<Shared>,
    registry: &Mutex<PluginRegistry>,
    prune_tx: &Sender<Job>,
    served: &AtomicU64,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    // Reads wake up now and then, so an idle connection cannot hold up a shutdown.
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if !line.ends_with('\n') {
            continue;
        }
        let request = std::mem::take(&mut line);
        if request.trim().is_empty() {
            continue;
        }
        let line = request;
        let answer = match serde_json::from_str::<Value>(&line) {
            Err(e) => json!({"ok": false, "error": format!("not JSON: {e}")}),
            Ok(req) => answer(&req, model, registry, prune_tx)
                .unwrap_or_else(|e| json!({"ok": false, "error": format!("{e:#}")})),
        };
        served.fetch_add(1, Ordering::SeqCst);
        writeln!(out, "{answer}")?;
    }
}

fn answer(
    req: &Value,
    model: &RwLock<Shared>,
    registry: &Mutex<PluginRegistry>,
    prune_tx: &Sender<Job>,
) -> anyhow::Result<Value> {
    match req["op"].as_str() {
        Some("generate") => {
            let prompt = req["prompt"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("generate needs a \"prompt\""))?;
            let max_new = req["max_new"].as_u64().unwrap_or(16) as usize;
            let m = model.read();
            let text = generate_greedy(&m.0, prompt, max_new)?;
            Ok(json!({"ok": true, "text": text}))
        }
        Some("reprune") => {
            let s = |k: &str| req[k].as_str().map(str::to_string);
            let settings: BTreeMap<String, String> = req["settings"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| {
                            (
                                k.clone(),
                                v.as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string()),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let nm = req["pattern"]
                .as_str()
                .and_then(|p| p.split_once(':'))
                .and_then(|(n, m)| Some((n.parse().ok()?, m.parse().ok()?)));
            let (reply, rx) = bounded(1);
            prune_tx.send(Job::Reprune(Reprune {
                scorer: s("scorer").unwrap_or_else(|| "magnitude".into()),
                strategy: s("strategy").unwrap_or_else(|| "global".into()),
                settings,
                sparsity: req["sparsity"].as_f64().unwrap_or(0.5),
                nm,
                reply,
            }))?;
            Ok(rx.recv()?)
        }
        Some("undo") => {
            let (reply, rx) = bounded(1);
            prune_tx.send(Job::Undo(reply))?;
            Ok(rx.recv()?)
        }
        Some("status") => {
            let m = model.read();
            let comps: Vec<String> = registry
                .lock()
                .components()
                .map(|c| c.info.name.to_string())
                .collect();
            Ok(json!({"ok": true, "sparsity": sparsity(&m.0)?, "components": comps}))
        }
        other => Ok(
            json!({"ok": false, "error": format!("unknown op {other:?} (generate, reprune, undo, status)")}),
        ),
    }
}

fn reprune(
    model: &RwLock<Shared>,
    registry: &Mutex<PluginRegistry>,
    stats: &ActivationStats,
    plugins: &std::path::Path,
    job: &Reprune,
    history: &mut UndoHistory,
    policy: &UndoPolicy,
) -> anyhow::Result<Value> {
    // New plugin files dropped into the folder since the last scan are loaded now.
    let (new_files, rejected, mut pruner) = {
        let mut reg = registry.lock();
        let scan = reg.load_dir(plugins);
        let pruner = Pruner::new(
            &reg,
            &job.scorer,
            &BTreeMap::new(),
            &job.strategy,
            &job.settings,
        )?;
        (scan.loaded, scan.rejected, pruner)
    };
    let pass = PassConfig {
        sparsity: job.sparsity,
        nm: job.nm,
        ..Default::default()
    };
    // Plan while requests keep being served; then wait for them and commit alone.
    let started = Instant::now();
    let guard = model.upgradable_read();
    let plan = pruner.plan(
        guard.0.model.var_store(),
        &pass,
        PassInputs {
            stats: Some(stats),
            ..Default::default()
        },
    )?;
    let planned = started.elapsed().as_secs_f64();
    let guard = RwLockUpgradableReadGuard::upgrade(guard);
    let (report, _, journal) = plan.commit_undoable()?;
    history.push(journal, policy);
    let sp = sparsity(&guard.0)?;
    drop(guard);
    Ok(json!({
        "ok": true,
        "scorer": report.scorer,
        "strategy": report.strategy,
        "pruned": report.pruned,
        "total": report.total,
        "sparsity": sp,
        "plan_seconds": planned,
        "commit_seconds": report.commit_seconds,
        "new_plugins": new_files,
        "rejected": rejected.iter().map(|r| format!("{}: {}", r.path.display(), r.reason)).collect::<Vec<_>>(),
    }))
}

/// Takes the newest kept pass back, under the write lock.
fn undo(model: &RwLock<Shared>, history: &mut UndoHistory) -> anyhow::Result<Value> {
    let guard = model.write();
    let undone = history.undo()?;
    let sp = sparsity(&guard.0)?;
    drop(guard);
    Ok(json!({"ok": true, "undone": undone, "sparsity": sp, "undoable": history.len()}))
}

/// A client of the line protocol (used by the tests and handy in scripts).
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    /// Connects.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<Client> {
        let s = TcpStream::connect(addr)?;
        Ok(Client {
            writer: s.try_clone()?,
            reader: BufReader::new(s),
        })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, req: &Value) -> anyhow::Result<Value> {
        writeln!(self.writer, "{req}")?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    }
}
