//! `birdbone-serve-soak`: the serving soak on a GPU with the Mistral-7B shape (random weights):
//! clients generate while a re-prune and an undo alternate, and the report gives the longest
//! stall of a token step against the commit times. Exits non-zero if a request failed or an
//! answer mixed two versions of the weights.
//!
//! ```text
//! cargo build --release -p birdbone-example-serve -p birdbone-plugin-magnitude -p birdbone-plugin-global
//! target/release/birdbone-serve-soak --layers 32 --clients 4 --max-new 32 --cycles 4
//! ```

use std::path::PathBuf;

use birdbone_example_serve::{build_core, soak, Model, RepruneRequest};
use birdbone_llama::Llama;
use birdbone_tch::PluginRegistry;
use clap::Parser;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "Soak the live-pruning server's lock on the Mistral-7B shape (random weights)")]
struct Args {
    /// Decoder blocks (32 for the whole 7B shape).
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Client threads generating at once.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 32)]
    max_new: usize,
    /// Re-prune + undo cycles while the clients run.
    #[arg(long, default_value_t = 4)]
    cycles: usize,
    /// The re-prune, as the HTTP endpoint takes it.
    #[arg(
        long,
        default_value = r#"{"scorer": "magnitude", "strategy": "global", "sparsity": 0.5}"#
    )]
    reprune: String,
    /// Device: cuda:N or cpu.
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// Folder of built-in plugins (default: next to this executable).
    #[arg(long)]
    builtin: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    birdbone_host::init_logging();
    let a = Args::parse();
    let device = birdbone_llama::parse_device(&a.device)?;
    let reprune: RepruneRequest = serde_json::from_str(&a.reprune)?;
    let builtin = a.builtin.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|p| p.to_path_buf()))
            .unwrap_or_default()
    });
    let t0 = std::time::Instant::now();
    let llama = Llama::random(
        Llama::mistral_7b_shape(a.layers)?,
        device,
        Kind::BFloat16,
        0.02,
    )?;
    tch::manual_seed(0);
    let ids = Tensor::randint(32000, [4, 128], (Kind::Int64, Device::Cpu));
    let windows: Vec<Vec<i64>> = (0..4)
        .map(|i| Vec::<i64>::try_from(&ids.get(i)))
        .collect::<Result<_, _>>()?;
    let prompt: Vec<i64> = windows[0][..16].to_vec();
    let live = std::env::temp_dir().join(format!("birdbone-soak-{}", std::process::id()));
    std::fs::create_dir_all(&live)?;
    let mut registry = PluginRegistry::new();
    registry.load_dir(&builtin);
    let model = Model {
        llama,
        tokenizer: None,
    };
    let load = t0.elapsed().as_secs_f64();
    let core = build_core(model, &windows, registry, live.clone(), None, 0, load)?;
    let report = soak::run(&core, &prompt, a.max_new, a.clients, &reprune, a.cycles)?;
    let _ = std::fs::remove_dir(&live);
    println!("{}", serde_json::to_string_pretty(&report)?);
    let held = report
        .longest_commit_seconds
        .max(report.longest_undo_seconds);
    eprintln!(
        "{} requests ({} restarts), {} failed, {} mixed; longest stall {:.1} ms = {:.2}x the longest write-lock hold {:.1} ms (commit {:.1} ms, undo {:.1} ms; writer's wait {:.1} ms); requests {:.2} s median, {:.2} s longest",
        report.requests,
        report.restarts,
        report.failed,
        report.mixed,
        report.longest_stall_seconds * 1e3,
        report.longest_stall_seconds / held,
        held * 1e3,
        report.longest_commit_seconds * 1e3,
        report.longest_undo_seconds * 1e3,
        report.longest_write_wait_seconds * 1e3,
        report.median_request_seconds,
        report.longest_request_seconds,
    );
    if report.failed > 0 || report.mixed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
