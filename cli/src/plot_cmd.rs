//! `birdbone plot-allocation`: the sparsity each allocation gives every layer, side by side
//! (from `allocation.json` files beside pruned models), and perplexity against sparsity for
//! each allocator (from a table of measured rows).

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context;
use birdbone_host::{role_of, Allocation};

use crate::plot::{self, Series};

#[derive(clap::Args)]
pub struct Args {
    /// allocation.json files (each drawn as one line: its layers' sparsity).
    allocations: Vec<PathBuf>,
    /// Where to draw the per-layer sparsities (.svg or .png).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also draw perplexity against sparsity from this JSON file: rows of
    /// `{"allocator": "owl", "sparsity": 0.7, "perplexity": 456.0}`.
    #[arg(long, value_name = "FILE", requires = "perplexity_out")]
    perplexity: Option<PathBuf>,
    /// Where to draw it.
    #[arg(long, value_name = "FILE")]
    perplexity_out: Option<PathBuf>,
}

/// A layer's sparsity: its matrices' pruned weights over their weights.
fn per_layer(a: &Allocation) -> Vec<(f64, f64)> {
    let mut layers: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for p in &a.params {
        if let Some(l) = role_of(&p.name).layer.into_option() {
            let e = layers.entry(l).or_default();
            e.0 += p.prune;
            e.1 += p.numel;
        }
    }
    layers
        .into_iter()
        .map(|(l, (pruned, n))| (l as f64, 100.0 * pruned as f64 / n.max(1) as f64))
        .collect()
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.allocations.is_empty(),
        "give at least one allocation.json"
    );
    let mut series = Vec::new();
    let mut target = None;
    for path in &a.allocations {
        let alloc = Allocation::load(path)?;
        target.get_or_insert(alloc.sparsity);
        series.push(Series {
            name: format!("{} ({:.0}%)", alloc.allocator, 100.0 * alloc.sparsity),
            points: per_layer(&alloc),
            line: true,
        });
    }
    let title = format!(
        "Sparsity per layer by allocator (target {:.0}%)",
        100.0 * target.unwrap_or(0.0)
    );
    plot::sparsity_by_layer(&series, &title, &a.out)?;
    println!("drew {}", a.out.display());
    if let (Some(table), Some(out)) = (&a.perplexity, &a.perplexity_out) {
        let rows: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(table)
                .with_context(|| format!("reading {}", table.display()))?,
        )
        .with_context(|| format!("{} is not a JSON list of rows", table.display()))?;
        let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in &rows {
            let (Some(name), Some(s), Some(p)) = (
                r["allocator"].as_str(),
                r["sparsity"].as_f64(),
                r["perplexity"].as_f64(),
            ) else {
                anyhow::bail!(
                    "{}: a row needs allocator, sparsity and perplexity: {r}",
                    table.display()
                );
            };
            by.entry(name.to_string()).or_default().push((100.0 * s, p));
        }
        let series: Vec<Series> = by
            .into_iter()
            .map(|(name, mut points)| {
                points.sort_by(|x, y| x.0.total_cmp(&y.0));
                Series {
                    name,
                    points,
                    line: true,
                }
            })
            .collect();
        plot::perplexity_vs_sparsity(&series, "Perplexity against sparsity by allocator", out)?;
        println!("drew {}", out.display());
    }
    Ok(())
}

/// `birdbone plot-finetune`: perplexity over the fine-tuning steps, one line per variant.
#[derive(clap::Args)]
pub struct FinetuneArgs {
    /// The `--json` file of a `birdbone-finetune` run (variants with `curve` points).
    results: PathBuf,
    /// Where to draw it (.svg or .png).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

/// Draws a fine-tuning comparison: each variant from step 0 (the perplexity it starts from:
/// after its one-shot pass, or the dense model's) through its `curve` points.
pub fn finetune(a: FinetuneArgs) -> anyhow::Result<()> {
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&a.results)
            .with_context(|| format!("reading {}", a.results.display()))?,
    )
    .with_context(|| format!("{} is not JSON", a.results.display()))?;
    let outcomes = doc["outcomes"].as_array().with_context(|| {
        format!(
            "{}: no `outcomes` list (is it a birdbone-finetune --json file?)",
            a.results.display()
        )
    })?;
    let dense = doc["dense_ppl"].as_f64();
    let mut series = Vec::new();
    for o in outcomes {
        let name = o["variant"].as_str().unwrap_or("?").to_string();
        let mut points: Vec<(f64, f64)> = o["ppl_before_finetune"]
            .as_f64()
            .or(dense)
            .map(|p| (0.0, p))
            .into_iter()
            .collect();
        for p in o["curve"].as_array().into_iter().flatten() {
            let (Some(step), Some(ppl)) = (p[0].as_f64(), p[1].as_f64()) else {
                anyhow::bail!(
                    "{}: a curve point is [step, perplexity]: {p}",
                    a.results.display()
                );
            };
            points.push((step, ppl));
        }
        anyhow::ensure!(
            !points.is_empty(),
            "{}: '{name}' has no points",
            a.results.display()
        );
        series.push(Series {
            name,
            points,
            line: true,
        });
    }
    let title = format!(
        "Fine-tuning to {:.0}% sparsity: perplexity over the steps",
        100.0 * doc["sparsity"].as_f64().unwrap_or(f64::NAN)
    );
    plot::perplexity_over_steps(&series, &title, &a.out)?;
    println!("drew {}", a.out.display());
    Ok(())
}
