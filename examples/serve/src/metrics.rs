//! Counters for `/metrics`, in the Prometheus text format (written by hand: a few atomics).

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering},
};

use parking_lot::Mutex;

/// An f64 kept in an `AtomicU64`.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets it.
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// Adds to it.
    pub fn add(&self, v: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + v).to_bits())
            });
    }
    /// Raises it to `v` if `v` is larger.
    pub fn max(&self, v: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (v > f64::from_bits(b)).then(|| v.to_bits())
            });
    }
    /// Its value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Everything `/metrics` reports.
#[derive(Default)]
pub struct Metrics {
    /// Answers by route and status code.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Connections turned away at the connection limit.
    pub connections_refused: AtomicU64,
    /// Generations running now.
    pub generations_in_flight: AtomicU64,
    /// Generations started over because a commit landed mid-answer.
    pub restarts: AtomicU64,
    /// Per recorded flag (0: not recorded, 1: recorded): generations, tokens, seconds.
    generated: [(AtomicU64, AtomicU64, Gauge); 2],
    /// The longest wait for a token step's read lock, and their sum and count.
    lock_wait_max: Gauge,
    lock_wait_sum: Gauge,
    lock_waits: AtomicU64,
    /// Commits and undos, and the latest's plan time, wait for the write lock and time holding it.
    pub commits: AtomicU64,
    /// Undos that restored weights.
    pub undos: AtomicU64,
    /// Seconds planning the latest re-prune (no lock held).
    pub last_plan_seconds: Gauge,
    /// Seconds the latest commit or undo waited for the write lock.
    pub last_write_wait_seconds: Gauge,
    /// Seconds the latest commit or undo held the write lock.
    pub last_write_hold_seconds: Gauge,
    /// The longest the write lock was held.
    pub max_write_hold_seconds: Gauge,
    /// Share of pruned Linear weights now.
    pub sparsity: Gauge,
    /// The weights' epoch (commits and undos so far).
    pub epoch: AtomicU64,
    traffic_requests: AtomicU64,
    traffic_tokens: AtomicU64,
    traffic_rows: AtomicU64,
    traffic_merge_seconds: Gauge,
}

impl Metrics {
    /// Counts one answer.
    pub fn answered(&self, route: &str, status: u16) {
        *self
            .requests
            .lock()
            .entry((route.to_string(), status))
            .or_default() += 1;
    }

    /// Counts a wait for a token step's read lock.
    pub fn lock_wait(&self, seconds: f64) {
        self.lock_wait_max.max(seconds);
        self.lock_wait_sum.add(seconds);
        self.lock_waits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a finished generation.
    pub fn generated(&self, tokens: u64, seconds: f64, recorded: bool, _restarts: u32) {
        let (n, t, s) = &self.generated[recorded as usize];
        n.fetch_add(1, Ordering::Relaxed);
        t.fetch_add(tokens, Ordering::Relaxed);
        s.add(seconds);
    }

    /// The longest wait of a token step for the read lock so far, in seconds.
    pub fn longest_lock_wait(&self) -> f64 {
        self.lock_wait_max.get()
    }

    /// Seconds adding one request's statistics to the traffic totals.
    pub fn merge_seconds(&self, seconds: f64) {
        self.traffic_merge_seconds.add(seconds);
    }

    /// The traffic totals now.
    pub fn traffic(&self, requests: u64, tokens: u64, rows: u64) {
        self.traffic_requests.store(requests, Ordering::Relaxed);
        self.traffic_tokens.store(tokens, Ordering::Relaxed);
        self.traffic_rows.store(rows, Ordering::Relaxed);
    }

    /// Seconds per generated token, recorded or not (`None` before the first such token).
    pub fn seconds_per_token(&self, recorded: bool) -> Option<f64> {
        let (_, t, s) = &self.generated[recorded as usize];
        let t = t.load(Ordering::Relaxed);
        (t > 0).then(|| s.get() / t as f64)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(o, "{name}{labels} {v}");
            }
        };
        let one = |v: f64| vec![(String::new(), v)];
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let requests: Vec<(String, f64)> = self
            .requests
            .lock()
            .iter()
            .map(|((r, c), n)| (format!("{{route=\"{r}\",code=\"{c}\"}}"), *n as f64))
            .collect();
        metric(
            "birdbone_http_requests_total",
            "counter",
            "HTTP answers by route and status code.",
            &requests,
        );
        metric(
            "birdbone_connections_open",
            "gauge",
            "TCP connections open.",
            &one(ld(&self.connections_open)),
        );
        metric(
            "birdbone_connections_refused_total",
            "counter",
            "Connections answered 503 at the connection limit.",
            &one(ld(&self.connections_refused)),
        );
        metric(
            "birdbone_generations_in_flight",
            "gauge",
            "Generations running.",
            &one(ld(&self.generations_in_flight)),
        );
        let by = |f: &dyn Fn(&(AtomicU64, AtomicU64, Gauge)) -> f64| {
            (0..2)
                .map(|i| {
                    (
                        format!("{{recorded=\"{}\"}}", i == 1),
                        f(&self.generated[i]),
                    )
                })
                .collect::<Vec<_>>()
        };
        metric(
            "birdbone_generations_total",
            "counter",
            "Generations answered.",
            &by(&|g| ld(&g.0)),
        );
        metric(
            "birdbone_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &by(&|g| ld(&g.1)),
        );
        metric(
            "birdbone_generation_seconds_total",
            "counter",
            "Seconds generating (restarts included).",
            &by(&|g| g.2.get()),
        );
        metric(
            "birdbone_generation_restarts_total",
            "counter",
            "Generations started over because a commit landed mid-answer.",
            &one(ld(&self.restarts)),
        );
        metric(
            "birdbone_read_lock_wait_seconds_max",
            "gauge",
            "Longest wait of a token step for the model's read lock.",
            &one(self.lock_wait_max.get()),
        );
        metric(
            "birdbone_read_lock_wait_seconds_total",
            "counter",
            "Seconds token steps waited for the read lock.",
            &one(self.lock_wait_sum.get()),
        );
        metric(
            "birdbone_read_lock_waits_total",
            "counter",
            "Token steps (read locks taken).",
            &one(ld(&self.lock_waits)),
        );
        metric(
            "birdbone_commits_total",
            "counter",
            "Re-prunes committed.",
            &one(ld(&self.commits)),
        );
        metric(
            "birdbone_undos_total",
            "counter",
            "Passes taken back.",
            &one(ld(&self.undos)),
        );
        metric(
            "birdbone_last_plan_seconds",
            "gauge",
            "Seconds planning the latest re-prune (no lock held).",
            &one(self.last_plan_seconds.get()),
        );
        metric(
            "birdbone_last_write_wait_seconds",
            "gauge",
            "Seconds the latest commit or undo waited for the write lock.",
            &one(self.last_write_wait_seconds.get()),
        );
        metric(
            "birdbone_last_write_hold_seconds",
            "gauge",
            "Seconds the latest commit or undo held the write lock.",
            &one(self.last_write_hold_seconds.get()),
        );
        metric(
            "birdbone_write_hold_seconds_max",
            "gauge",
            "Longest time the write lock was held.",
            &one(self.max_write_hold_seconds.get()),
        );
        metric(
            "birdbone_model_sparsity",
            "gauge",
            "Share of pruned Linear weights.",
            &one(self.sparsity.get()),
        );
        metric(
            "birdbone_model_epoch",
            "gauge",
            "Commits and undos applied so far.",
            &one(ld(&self.epoch)),
        );
        metric(
            "birdbone_traffic_recorded_requests_total",
            "counter",
            "Requests whose activation statistics were recorded.",
            &one(ld(&self.traffic_requests)),
        );
        metric(
            "birdbone_traffic_recorded_tokens_total",
            "counter",
            "Tokens (prompt and generated) in the recorded statistics.",
            &one(ld(&self.traffic_tokens)),
        );
        metric(
            "birdbone_traffic_merge_seconds_total",
            "counter",
            "Seconds adding recorded requests to the traffic statistics.",
            &one(self.traffic_merge_seconds.get()),
        );
        // The recording's cost per token: seconds per token of recorded generations less those
        // of the others (both include the prompt's forward; an estimate that needs both kinds).
        let cost = match (self.seconds_per_token(true), self.seconds_per_token(false)) {
            (Some(r), Some(p)) => r - p,
            _ => f64::NAN,
        };
        metric("birdbone_traffic_record_seconds_per_token", "gauge", "Extra seconds per generated token of a recorded request (recorded less unrecorded; NaN until both were seen).", &one(cost));
        o
    }
}
