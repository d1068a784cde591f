//! `birdbone demo`: what a new user wants to see. The real model is loaded and served a sample;
//! calibration text warms it up; Wanda prunes it 50% in place through the plugins; perplexity
//! and a sample come before and after, with the time of every phase and the sparsity per layer.

use std::{collections::BTreeMap, time::Instant};

use birdbone_llama::generate_greedy;
use birdbone_tch::{PassConfig, PassInputs, Pruner};

use crate::common::{self, CalibrationArgs, EvalArgs, ModelArgs, PluginArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub eval: EvalArgs,
    #[command(flatten)]
    pub calibration: CalibrationArgs,
    #[command(flatten)]
    pub plugins: PluginArgs,
    /// Sparsity, 0 to 1.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
}

const PROMPT: &str = "The capital of France is";

pub fn run(a: Args) -> anyhow::Result<()> {
    a.eval.validate()?;
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.sparsity),
        "--sparsity {} is not between 0 and 1",
        a.sparsity
    );
    let cal_cfg = a.calibration.apply(Default::default());
    anyhow::ensure!(
        cal_cfg.mode == birdbone_host::recipe::CalibrationMode::OnePass,
        "the demo calibrates in one pass: use prune for --calibration-mode sequential"
    );
    let reg = a.plugins.registry()?;
    let t = Instant::now();
    let m = a.model.load()?;
    let device = m.model.device();
    println!("== Birdbone demo: prune a live model in place with Wanda, through the plugins");
    println!(
        "model {} on {device:?} ({}): loaded in {:.1} s",
        m.dir.display(),
        a.model.dtype,
        t.elapsed().as_secs_f64()
    );

    let names: Vec<&str> = reg.components().map(|c| c.info.name.as_str()).collect();
    println!("plugins: {} components ({})", names.len(), names.join(", "));

    let t = Instant::now();
    let before = generate_greedy(&m, PROMPT, 24)?;
    println!(
        "\nsample before ({:.1} s): {PROMPT}{before}",
        t.elapsed().as_secs_f64()
    );
    let eval = a.eval.windows_of(&m)?;
    let dense = common::perplexity(&m, &eval, a.eval.batch, "eval")?;
    println!(
        "perplexity before: {:.4} ({} windows of {} tokens of {}, {:.1} s)",
        dense.ppl, dense.windows, a.eval.window, a.eval.text, dense.seconds
    );

    let calib = common::text_windows(&m, &cal_cfg.text, cal_cfg.length, cal_cfg.windows)?;
    let (stats, cal) = common::calibrate(&m, &calib, cal_cfg.batch)?;
    println!(
        "\nwarm-up: {} windows of {} ({} tokens) through the model in {:.1} s: input statistics for {} Linear weights",
        cal.windows,
        cal_cfg.text,
        cal.tokens,
        cal.seconds,
        stats.len()
    );

    let settings: BTreeMap<String, String> = [("scope".to_string(), "row".to_string())].into();
    let mut pruner = Pruner::new(&reg, "wanda", &BTreeMap::new(), "layerwise", &settings)?;
    let cfg = PassConfig {
        sparsity: a.sparsity,
        ..Default::default()
    };
    let (report, masks) = pruner.run(
        m.model.var_store(),
        &cfg,
        PassInputs {
            stats: Some(&stats),
            ..Default::default()
        },
    )?;
    println!(
        "prune: {} + {}: {} of {} weights ({:.2}%), plan {:.3} s, commit {:.3} s, {} masks kept",
        report.scorer,
        report.strategy,
        report.pruned,
        report.total,
        100.0 * report.sparsity,
        report.plan_seconds,
        report.commit_seconds,
        masks.len()
    );
    println!("\nsparsity per layer:");
    let mut layers: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for p in &report.params {
        let layer = birdbone_tch::role_of(&p.name)
            .layer
            .into_option()
            .unwrap_or(u32::MAX);
        let e = layers.entry(layer).or_default();
        e.0 += p.pruned;
        e.1 += p.numel;
    }
    for (layer, (pruned, total)) in &layers {
        println!(
            "  layer {layer:>2}: {:.2}% of {total} weights",
            100.0 * *pruned as f64 / *total as f64
        );
    }

    let pruned = common::perplexity(&m, &eval, a.eval.batch, "eval")?;
    println!(
        "\nperplexity after: {:.4} (before {:.4}; {:.1} s)",
        pruned.ppl, dense.ppl, pruned.seconds
    );
    let t = Instant::now();
    let after = generate_greedy(&m, PROMPT, 24)?;
    println!(
        "sample after ({:.1} s): {PROMPT}{after}",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
