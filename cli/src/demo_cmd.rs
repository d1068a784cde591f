//! `birdbone demo`: what a new user wants to see. The real model is loaded and served a sample;
//! calibration text warms it up; Wanda prunes it 50% in place through the plugins; perplexity
//! and a sample come before and after, with the time of every phase and the sparsity per layer.

use std::{collections::BTreeMap, time::Instant};

use birdbone_llama::{collect_stats, generate_greedy, perplexity};
use birdbone_tch::{ActivationStats, PassConfig, PassInputs, Pruner};

use crate::model_io::Experiment;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub experiment: Experiment,
    /// Sparsity.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
}

const PROMPT: &str = "The capital of France is";

pub fn run(a: Args) -> anyhow::Result<()> {
    let t = Instant::now();
    let x = &a.experiment;
    let m = x.load()?;
    let device = m.model.device();
    println!("== Birdbone demo: prune a live model in place with Wanda, through the plugins");
    println!(
        "model {} on {device:?} ({}): loaded in {:.1} s",
        m.dir.display(),
        x.dtype,
        t.elapsed().as_secs_f64()
    );

    let reg = x.registry();
    let names: Vec<&str> = reg.components().map(|c| c.info.name.as_str()).collect();
    println!("plugins: {} components ({})", names.len(), names.join(", "));

    let t = Instant::now();
    let before = generate_greedy(&m, PROMPT, 24)?;
    println!(
        "\nsample before ({:.1} s): {PROMPT}{before}",
        t.elapsed().as_secs_f64()
    );
    let eval = x.eval_windows(&m)?;
    let dense = perplexity(&m.model, &eval, 4)?;
    println!(
        "perplexity before: {:.2} ({} windows of 512 tokens of wiki.utf8, {:.1} s)",
        dense.ppl, dense.windows, dense.seconds
    );

    let calib = x.calibration_windows(&m)?;
    let (sums, cal) = collect_stats(&m.model, &calib, 4)?;
    let stats = ActivationStats::from(sums);
    println!(
        "\nwarm-up: {} windows of c4.utf8 ({} tokens) through the model in {:.1} s: input statistics for {} Linear weights",
        cal.windows,
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

    let pruned = perplexity(&m.model, &eval, 4)?;
    println!(
        "\nperplexity after: {:.2} (before {:.2}; {:.1} s)",
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
