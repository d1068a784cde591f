//! `birdbone-serve`: serve the real model, pruned at warm-up, re-prunable live.
//!
//! ```text
//! birdbone-serve --model .cache/smollm2-135m --plugins ./live-plugins --builtin target/release
//! echo '{"op":"generate","prompt":"The capital of France is"}' | nc 127.0.0.1 7341
//! cp libmy_scorer.so ./live-plugins/ && echo '{"op":"reprune","scorer":"my-scorer","strategy":"global","sparsity":0.6}' | nc 127.0.0.1 7341
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use birdbone_example_serve::{start, ServeConfig};
use clap::Parser;

#[derive(Parser)]
#[command(
    about = "Serve a Birdbone-pruned model; re-prune it live with plugins dropped into --plugins"
)]
struct Args {
    /// Model folder or cached hub id.
    #[arg(long)]
    model: String,
    /// Live plugin folder, rescanned on every re-prune.
    #[arg(long)]
    plugins: PathBuf,
    /// Folder of built-in plugins, loaded once (default: next to this executable).
    #[arg(long)]
    builtin: Option<PathBuf>,
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:7341")]
    addr: String,
    /// Worker threads.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Calibration text for warm-up statistics.
    #[arg(long)]
    calibration_text: PathBuf,
    /// Calibration windows of 512 tokens.
    #[arg(long, default_value_t = 32)]
    calibration_windows: usize,
    /// Warm-up sparsity with wanda + layerwise scope=row (0 to skip).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
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
    let server = start(ServeConfig {
        model: a.model,
        plugins: a.plugins,
        extra_plugins: vec![builtin],
        addr: a.addr.parse()?,
        threads: a.threads,
        calibration_text: a.calibration_text,
        calibration: (a.calibration_windows, 512),
        warmup,
        device: tch::Device::cuda_if_available(),
        kind: tch::Kind::Float,
    })?;
    eprintln!("warm-up: {}", serde_json::to_string(&server.warmup)?);
    eprintln!(
        "serving on {} (line-delimited JSON: generate, reprune, status)",
        server.addr
    );
    loop {
        std::thread::park();
    }
}
