//! `birdbone-serve`: serve the real model over HTTP, pruned at warm-up, re-prunable live.
//!
//! ```text
//! export BIRDBONE_SERVE_TOKEN=$(head -c 24 /dev/urandom | base64)
//! birdbone-serve --model .cache/smollm2-135m --plugins ./live-plugins --calibration-text c4.utf8
//! curl -s localhost:7341/v1/generate -d '{"prompt": "The capital of France is"}'
//! curl -s localhost:7341/v1/admin/reprune -H "Authorization: Bearer $BIRDBONE_SERVE_TOKEN" \
//!     -d '{"scorer": "wanda", "strategy": {"name": "layerwise", "params": {"scope": "row"}}, "sparsity": 0.6}'
//! ```

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use birdbone_example_serve::{start, Limits, ServeConfig, TOKEN_ENV};
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Serve a Birdbone-pruned model over HTTP; re-prune it live with plugins dropped into --plugins"
)]
struct Args {
    /// Model folder or cached hub id.
    #[arg(long)]
    model: String,
    /// Live plugin folder, rescanned by POST /v1/admin/plugins/reload.
    #[arg(long)]
    plugins: PathBuf,
    /// Folder of built-in plugins, loaded once (default: next to this executable).
    #[arg(long)]
    builtin: Option<PathBuf>,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7341")]
    addr: String,
    /// Calibration text for warm-up statistics.
    #[arg(long)]
    calibration_text: PathBuf,
    /// Calibration windows of 512 tokens.
    #[arg(long, default_value_t = 32)]
    calibration_windows: usize,
    /// Warm-up sparsity with wanda + layerwise scope=row (0 to skip).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// A file holding the admin token (else the BIRDBONE_SERVE_TOKEN variable; with neither,
    /// the admin endpoints are disabled).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Record activation statistics from 1 request in N (for re-prunes with
    /// "statistics": "traffic"); off by default.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "8")]
    record_activations: Option<u64>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Largest max_new_tokens a request may ask for.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: u32,
    /// Connections open at once (more are answered 503).
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// Generations running at once (more wait).
    #[arg(long, default_value_t = 4)]
    max_generations: usize,
    /// Seconds a connection may stay idle (or take sending a request head).
    #[arg(long, default_value_t = 10.0)]
    idle_seconds: f64,
    /// Seconds a request may take, waiting included.
    #[arg(long, default_value_t = 120.0)]
    request_seconds: f64,
}

fn main() -> anyhow::Result<()> {
    birdbone_host::init_logging();
    let a = Args::parse();
    let builtin = a.builtin.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|p| p.to_path_buf()))
            .unwrap_or_default()
    });
    let warmup = (a.sparsity > 0.0).then(|| {
        let st: BTreeMap<String, String> = [("scope".to_string(), "row".to_string())].into();
        ("wanda".to_string(), "layerwise".to_string(), st, a.sparsity)
    });
    let admin_token = match &a.admin_token_file {
        Some(f) => Some(std::fs::read_to_string(f)?.trim().to_string()),
        None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_string()),
    }
    .filter(|t| !t.is_empty());
    let server = start(ServeConfig {
        model: a.model,
        plugins: a.plugins,
        extra_plugins: vec![builtin],
        trust: None,
        addr: a.addr.parse()?,
        calibration_text: a.calibration_text,
        calibration: (a.calibration_windows, 512),
        warmup,
        device: tch::Device::cuda_if_available(),
        kind: tch::Kind::Float,
        limits: Limits {
            max_body_bytes: a.max_body_bytes,
            max_new_tokens: a.max_new_tokens,
            max_connections: a.max_connections,
            max_generations: a.max_generations,
            idle_time: Duration::from_secs_f64(a.idle_seconds),
            request_time: Duration::from_secs_f64(a.request_seconds),
            ..Limits::default()
        },
        admin_token: admin_token.clone(),
        record_activations: a.record_activations.unwrap_or(0),
        handle_signals: true,
    })?;
    tracing::info!(warmup = %serde_json::to_string(&server.warmup)?, "warmed up");
    eprintln!(
        "serving on http://{} (admin endpoints {})",
        server.addr,
        if admin_token.is_some() {
            "on"
        } else {
            "disabled: no token"
        }
    );
    server.wait();
    Ok(())
}
