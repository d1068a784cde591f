//! `birdbone-finetune`: fine-tune the real model with Birdbone's training callback, and compare
//! ways of reaching a sparsity at an equal fine-tuning budget (the same steps, the same tokens
//! in the same order):
//!
//! - `wanda-oneshot`: Wanda (`wanda` + `layerwise scope=row`, calibrated on c4) before the first
//!   step, then fine-tuning with the masks held;
//! - `birdbone-oneshot`: the same with the `birdbone` allocator's per-layer sparsities (its layer
//!   load measured on c4);
//! - `gradual-magnitude`: `magnitude` + `layerwise` on Zhu & Gupta's cubic schedule;
//! - `gradual-wanda`: the same schedule, Wanda per row, scored at each pass with the activations
//!   of the training forwards since the previous one;
//! - `growth-plates`: `gradual-wanda` with growth plates over layers: each layer rises to the
//!   `birdbone` allocation's sparsity, the least load-bearing first, then ossifies;
//! - `row-plates`: the first design (gradual magnitude, growing rows protected), not in `all`;
//! - `dense`: fine-tuning without pruning, for reference.
//!
//! Training text: wiki.utf8 after the evaluation windows; evaluation: the perplexity protocol of
//! `birdbone eval` (windows of 512 tokens from the start of wiki.utf8). On CUDA when present.
//!
//! ```text
//! target/release/birdbone-finetune --model .cache/smollm2-135m --variant all --steps 200
//! ```

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{bail, Context};
use birdbone_host::{Allocation, Recipe};
use birdbone_llama::{
    collect_stats, lm_loss_with, load_by_param, parse_device, perplexity, read_text, token_windows,
    Loaded, StatsRecorder,
};
use birdbone_tch::{
    selected,
    train::{Compression, CompressionConfig, Curve, LayerPlateConfig, Schedule},
    ActivationStats, ParamFilter, PassConfig, PassInputs, PluginRegistry, Pruner,
};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tch::{
    nn::{self, OptimizerConfig},
    Device, Kind, Tensor,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
enum Variant {
    WandaOneshot,
    BirdboneOneshot,
    GradualMagnitude,
    GradualWanda,
    GrowthPlates,
    RowPlates,
    Dense,
    /// Every variant but `row-plates`, dense last.
    All,
}

#[derive(Parser)]
#[command(about = "Fine-tune a Llama-family model with gradual pruning through Birdbone plugins")]
struct Args {
    /// Model folder or cached hub id.
    #[arg(long, default_value = ".cache/smollm2-135m")]
    model: String,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Variant::All)]
    variant: Variant,
    /// Optimizer steps per variant.
    #[arg(long, default_value_t = 200)]
    steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Peak learning rate (AdamW, linear warm-up, then constant).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 10)]
    warmup: u64,
    /// Final sparsity of the Linear weights.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// Evaluation windows of 512 tokens (wiki.utf8).
    #[arg(long, default_value_t = 64)]
    eval_windows: usize,
    /// Also evaluate every this many steps (0: at the end only).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Calibration windows of 512 tokens (c4.utf8) for Wanda.
    #[arg(long, default_value_t = 32)]
    calibration_windows: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Plugin folder (repeatable). Default: this executable's folder and its plugins/.
    #[arg(long = "plugins")]
    plugin_dirs: Vec<PathBuf>,
    /// A recipe with a `training` section (examples/recipes/gradual-magnitude-50.json):
    /// its scorer, strategy, schedule, selection and growth plates replace the built-in ones
    /// of `gradual-magnitude` and `row-plates`.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Share of the steps by which a gradual schedule reaches the final sparsity.
    #[arg(long, default_value_t = 0.5)]
    prune_until: f64,
    /// Growth plates over layers: the share of the schedule by which the least load-bearing
    /// layer is done.
    #[arg(long, default_value_t = 0.5)]
    earliest: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Outcome {
    variant: Variant,
    sparsity: f64,
    zeros_exact: bool,
    ppl_before_finetune: Option<f64>,
    ppl: f64,
    final_loss: f64,
    tokens: u64,
    seconds: f64,
    /// Mean time per step in the callback outside passes (mask re-application, gradient masks,
    /// scorer and growth-plate updates).
    callback_ms_per_step: f64,
    /// Time in pruning passes, all of them.
    pass_seconds: f64,
    /// Mean wall-clock time of a training step, everything included.
    step_ms: f64,
    /// Perplexity every `--eval-every` steps: `(step, perplexity)`.
    curve: Vec<(u64, f64)>,
}

/// Zhu & Gupta's schedule fitted to the budget: passes every 2.5% of the steps from 5% to
/// `until` (a share of the steps), cubic from 0 to the final sparsity, then the rest of the
/// steps to recover at the final sparsity.
fn default_schedule(steps: u64, sparsity: f64, until: f64) -> Schedule {
    let every = (steps / 40).max(1);
    let start = every.max(steps / 20);
    let last = (steps as f64 * until).round() as u64;
    let passes = (last.saturating_sub(start) / every).max(1);
    Schedule::Gradual {
        start_step: start,
        end_step: start + every * passes,
        every,
        initial_sparsity: 0.0,
        final_sparsity: sparsity,
        curve: Curve::Cubic,
    }
}

struct Data {
    eval: Vec<Vec<i64>>,
    calib: Vec<Vec<i64>>,
    train: Vec<Vec<i64>>,
}

fn main() -> anyhow::Result<()> {
    birdbone_host::init_logging();
    let a = Args::parse();
    if !(0.0..1.0).contains(&a.sparsity) {
        bail!("--sparsity {} is not in [0, 1)", a.sparsity);
    }
    if !(0.0..=1.0).contains(&a.prune_until) || !(0.0..=1.0).contains(&a.earliest) {
        bail!("--prune-until and --earliest are shares of the steps, in [0, 1]");
    }
    if a.steps == 0 || a.batch == 0 || a.seq < 2 {
        bail!("--steps and --batch must be positive and --seq at least 2");
    }
    let device = parse_device(&a.device)?;
    let dirs = if a.plugin_dirs.is_empty() {
        PluginRegistry::default_dirs()
    } else {
        a.plugin_dirs.clone()
    };
    let reg = PluginRegistry::discover(&dirs);
    for c in ["magnitude", "layerwise", "wanda", "birdbone"] {
        if reg.component(c).is_none() {
            bail!("plugin component '{c}' not found in {dirs:?}: build the workspace (cargo build --release) or pass --plugins");
        }
    }
    let file_cfg = a.recipe.as_deref().map(Recipe::from_file).transpose()?;
    if let Some(r) = &file_cfg {
        r.compression()?;
    }

    eprintln!("loading {} on {device:?} ...", a.model);
    let first = Loaded::load(&a.model, device, Kind::Float)?;
    let wiki = read_text("wiki.utf8")?;
    let eval = token_windows(&first.tokenizer, &wiki, 512, a.eval_windows)?;
    let calib = token_windows(
        &first.tokenizer,
        &read_text("c4.utf8")?,
        512,
        a.calibration_windows,
    )?;
    // Training windows: the rest of wiki.utf8, after the evaluation windows.
    let ids: Vec<i64> = first
        .tokenizer
        .encode(wiki.as_str(), false)
        .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    let train: Vec<Vec<i64>> = ids[(a.eval_windows * 512).min(ids.len())..]
        .chunks_exact(a.seq)
        .map(|w| w.to_vec())
        .collect();
    let needed = a.steps as usize * a.batch;
    if train.is_empty() {
        bail!("no training text left after the evaluation windows");
    }
    if needed > train.len() {
        eprintln!(
            "note: {needed} training sequences wanted, {} available: they repeat",
            train.len()
        );
    }
    let data = Data { eval, calib, train };
    let batch_eval = if device.is_cuda() { 16 } else { 4 };
    let dense = perplexity(&first.model, &data.eval, batch_eval)?;
    eprintln!(
        "dense perplexity {:.2} ({} windows of 512 tokens, {:.0} s)",
        dense.ppl, dense.windows, dense.seconds
    );
    let variants = match a.variant {
        Variant::All => vec![
            Variant::WandaOneshot,
            Variant::BirdboneOneshot,
            Variant::GradualMagnitude,
            Variant::GradualWanda,
            Variant::GrowthPlates,
            Variant::Dense,
        ],
        v => vec![v],
    };
    let allocation = if variants
        .iter()
        .any(|v| matches!(v, Variant::BirdboneOneshot | Variant::GrowthPlates))
    {
        Some(birdbone_allocation(&first, &reg, &data, a.sparsity)?)
    } else {
        None
    };
    drop(first);
    let mut outcomes = Vec::new();
    for v in variants {
        outcomes.push(run_variant(
            v,
            &a,
            device,
            &reg,
            &data,
            file_cfg.as_ref(),
            batch_eval,
            allocation.as_ref(),
        )?);
    }

    println!(
        "\nFine-tuning {} for {} steps × {} × {} tokens on {device:?} (AdamW, lr {}, wiki.utf8 after the evaluation windows); perplexity on wiki.utf8, {} windows of 512 tokens (dense before fine-tuning: {:.2}):\n",
        a.model, a.steps, a.batch, a.seq, a.lr, a.eval_windows, dense.ppl
    );
    println!("| variant | sparsity | exact | ppl after pruning, before FT | ppl after FT | final loss | time | step | callback per step | passes |\n| --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        println!(
            "| {} | {:.2}% | {} | {} | {:.2} | {:.3} | {:.0} s | {:.1} ms | {:.2} ms | {:.2} s |",
            serde_json::to_value(o.variant)?.as_str().unwrap_or("?"),
            100.0 * o.sparsity,
            if o.zeros_exact { "yes" } else { "NO" },
            o.ppl_before_finetune
                .map_or("–".to_string(), |p| format!("{p:.2}")),
            o.ppl,
            o.final_loss,
            o.seconds,
            o.step_ms,
            o.callback_ms_per_step,
            o.pass_seconds
        );
    }
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "model": a.model, "device": format!("{device:?}"), "steps": a.steps,
            "batch": a.batch, "seq": a.seq, "lr": a.lr, "dense_ppl": dense.ppl,
            "sparsity": a.sparsity, "prune_until": a.prune_until, "earliest": a.earliest,
            "eval_windows": a.eval_windows, "allocation": allocation, "outcomes": outcomes,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

/// The `birdbone` allocation at `sparsity` for Wanda per row, on the pretrained model: the layer
/// load measured on the first 8 calibration windows (c4), at the target and 0.1 above it.
fn birdbone_allocation(
    m: &Loaded,
    reg: &PluginRegistry,
    data: &Data,
    sparsity: f64,
) -> anyhow::Result<Allocation> {
    let t = Instant::now();
    let mut pruner = wanda_pruner(reg)?;
    pruner.set_allocator(reg, "birdbone", &BTreeMap::new())?;
    let (sums, _) = collect_stats(&m.model, &data.calib, 4)?;
    let stats = ActivationStats::from(sums);
    let cfg = PassConfig {
        sparsity,
        ..Default::default()
    };
    let levels = [sparsity, (sparsity + 0.1).min(1.0)];
    let (_, load) = load_by_param::<anyhow::Error>(
        &m.model,
        &mut pruner,
        &data.calib[..data.calib.len().min(8)],
        4,
        &levels,
        &cfg,
        &stats,
        &mut |_| {},
    )?;
    let inputs = PassInputs {
        stats: Some(&stats),
        load: Some(&load),
        ..Default::default()
    };
    let allocation = pruner.allocate(m.model.var_store(), &cfg, inputs)?;
    let (lo, hi) = allocation.sparsity_range();
    eprintln!(
        "birdbone allocation at {:.0}%: {:.1}% to {:.1}% per matrix, {:.1} s",
        100.0 * sparsity,
        100.0 * lo,
        100.0 * hi,
        t.elapsed().as_secs_f64()
    );
    Ok(allocation)
}

fn wanda_pruner(reg: &PluginRegistry) -> anyhow::Result<Pruner> {
    let row = [("scope".to_string(), "row".to_string())].into();
    Ok(Pruner::new(
        reg,
        "wanda",
        &BTreeMap::new(),
        "layerwise",
        &row,
    )?)
}

#[allow(clippy::too_many_arguments)]
fn run_variant(
    v: Variant,
    a: &Args,
    device: Device,
    reg: &PluginRegistry,
    data: &Data,
    file_cfg: Option<&Recipe>,
    batch_eval: usize,
    allocation: Option<&Allocation>,
) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let name = serde_json::to_value(v)?.as_str().unwrap_or("?").to_string();
    eprintln!("\n== {name} ==");
    tch::manual_seed(0);
    let m = Loaded::load(&a.model, device, Kind::Float)?;
    let vs = m.model.var_store();
    let none = BTreeMap::new();
    let gradual = CompressionConfig {
        schedule: default_schedule(a.steps, a.sparsity, a.prune_until),
        filter: ParamFilter::default(),
        nm: None,
        growth_plates: None,
        regrow: None,
        layer_plates: None,
    };
    let one_shot = CompressionConfig {
        schedule: Schedule::OneShot {
            at_step: 0,
            sparsity: a.sparsity,
        },
        ..gradual.clone()
    };
    let mut comp = match v {
        Variant::WandaOneshot => Some(Compression::new(wanda_pruner(reg)?, one_shot)?),
        Variant::BirdboneOneshot => {
            let mut c = Compression::new(wanda_pruner(reg)?, one_shot)?;
            c.set_allocation(allocation.expect("made for this variant").clone())?;
            Some(c)
        }
        Variant::GradualWanda => Some(Compression::new(wanda_pruner(reg)?, gradual)?),
        Variant::GrowthPlates => {
            let cfg = CompressionConfig {
                layer_plates: Some(LayerPlateConfig {
                    earliest: a.earliest,
                }),
                ..gradual
            };
            let mut c = Compression::new(wanda_pruner(reg)?, cfg)?;
            c.set_allocation(allocation.expect("made for this variant").clone())?;
            Some(c)
        }
        Variant::GradualMagnitude | Variant::RowPlates => {
            let (pruner, cfg) = match file_cfg {
                Some(r) => (Pruner::from_recipe(reg, r)?, r.compression()?),
                None => (
                    Pruner::new(reg, "magnitude", &none, "layerwise", &none)?,
                    gradual,
                ),
            };
            let plates =
                (v == Variant::RowPlates).then(|| cfg.growth_plates.clone().unwrap_or_default());
            let cfg = CompressionConfig {
                growth_plates: plates,
                ..cfg
            };
            Some(Compression::new(pruner, cfg)?)
        }
        Variant::Dense => None,
        Variant::All => unreachable!("expanded by the caller"),
    };
    let mut ppl_before = None;
    let mut pass_s = 0.0f64;
    if let (Variant::WandaOneshot | Variant::BirdboneOneshot, Some(c)) = (v, comp.as_mut()) {
        let (sums, cal) = collect_stats(&m.model, &data.calib, 4)?;
        let stats = ActivationStats::from(sums);
        let r = c.prune_now(vs, a.sparsity, Some(&stats))?;
        pass_s += r.plan_seconds + r.commit_seconds;
        let p = perplexity(&m.model, &data.eval, batch_eval)?;
        eprintln!(
            "one-shot: {:.2}% pruned (calibration {} tokens, {:.1} s), perplexity {:.2}",
            100.0 * r.sparsity,
            cal.tokens,
            cal.seconds,
            p.ppl
        );
        ppl_before = Some(p.ppl);
    }

    let mut opt = nn::AdamW::default().build(vs, a.lr)?;
    let pb = ProgressBar::new(a.steps);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} ({eta}) {msg}",
        )?
        .progress_chars("=> "),
    );
    pb.set_prefix(name.clone());
    let log = |line: String| {
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
    };
    let mut loss_avg = f64::NAN;
    let mut tokens = 0u64;
    let mut sparsity = ppl_before.map_or(0.0, |_| a.sparsity);
    let (mut callback_s, mut loop_pass_s) = (0.0f64, 0.0f64);
    let mut curve = Vec::new();
    let (train_started, mut eval_s) = (Instant::now(), 0.0f64);
    for step in 1..=a.steps {
        opt.set_lr(a.lr * (step as f64 / a.warmup.max(1) as f64).min(1.0));
        let rows: Vec<i64> = (0..a.batch)
            .flat_map(|i| {
                let k = ((step as usize - 1) * a.batch + i) % data.train.len();
                data.train[k].iter().copied()
            })
            .collect();
        let ids = Tensor::from_slice(&rows)
            .f_view([a.batch as i64, a.seq as i64])?
            .f_to_device(device)?;
        tokens += ids.numel() as u64;
        opt.zero_grad();
        // Scorers that read activations get them from this very forward.
        let mut rec = comp
            .as_ref()
            .is_some_and(|c| c.wants_activations())
            .then(StatsRecorder::new);
        let loss = lm_loss_with(&m.model, &ids, rec.as_mut())?;
        let l = loss.f_double_value(&[])?;
        if !l.is_finite() {
            bail!("{name}: the loss is {l} at step {step}; lower --lr");
        }
        loss.backward();
        let t0 = Instant::now();
        if let Some(c) = comp.as_mut() {
            if let Some(rec) = rec.take() {
                c.observe_activations(&rec.into_sums())?;
            }
            c.after_backward(vs)?;
        }
        callback_s += t0.elapsed().as_secs_f64();
        opt.step();
        if let Some(c) = comp.as_mut() {
            let t0 = Instant::now();
            let ev = c.after_step(vs)?;
            if device.is_cuda() {
                tch::Cuda::synchronize(0);
            }
            callback_s += t0.elapsed().as_secs_f64();
            sparsity = ev.sparsity;
            if let Some(p) = &ev.pass {
                pass_s += p.plan_seconds + p.commit_seconds;
                loop_pass_s += p.plan_seconds + p.commit_seconds;
                let plates = match (ev.protected_rows, c.layer_plates()) {
                    (n, _) if n > 0 => format!(", {n} rows protected"),
                    (_, Some(lp)) => format!(", {} matrices ossified", lp.ossified().len()),
                    _ => String::new(),
                };
                log(format!(
                    "step {step}: pass to {:.2}% in {:.2} s{plates} (loss {loss_avg:.3})",
                    100.0 * ev.sparsity,
                    p.plan_seconds + p.commit_seconds
                ));
            }
        }
        loss_avg = if loss_avg.is_nan() {
            l
        } else {
            0.95 * loss_avg + 0.05 * l
        };
        pb.set_message(format!(
            "loss {loss_avg:.3}, sparsity {:.1}%",
            100.0 * sparsity
        ));
        pb.inc(1);
        if a.eval_every > 0 && step % a.eval_every == 0 && step != a.steps {
            let t = Instant::now();
            let p = perplexity(&m.model, &data.eval, batch_eval)?;
            eval_s += t.elapsed().as_secs_f64();
            curve.push((step, p.ppl));
            log(format!("step {step}: perplexity {:.2}", p.ppl));
        }
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let step_ms = 1e3 * (train_started.elapsed().as_secs_f64() - eval_s) / a.steps as f64;
    pb.finish_and_clear();
    // The masks held: the selected weights have exactly the masks' count of zeros.
    let mut zeros_exact = true;
    let mut final_sparsity = 0.0;
    if let Some(c) = &comp {
        let (pruned, total) = c.masks().counts()?;
        let zeros: i64 = selected(vs, &ParamFilter::default())?
            .iter()
            .map(|(_, t)| t.eq(0.0).sum(Kind::Int64).int64_value(&[]))
            .sum();
        zeros_exact = zeros == pruned as i64;
        final_sparsity = pruned as f64 / total.max(1) as f64;
        if let Some(plates) = c.growth_plates() {
            log(format!(
                "growth plates: {} rows ossified",
                plates.ossified_rows()?
            ));
        }
    }
    let p = perplexity(&m.model, &data.eval, batch_eval)?;
    curve.push((a.steps, p.ppl));
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{name}: {:.2}% sparse, perplexity {:.2}, loss {loss_avg:.3}, {tokens} tokens, {seconds:.0} s",
        100.0 * final_sparsity,
        p.ppl
    );
    Ok(Outcome {
        variant: v,
        sparsity: final_sparsity,
        zeros_exact,
        ppl_before_finetune: ppl_before,
        ppl: p.ppl,
        final_loss: loss_avg,
        tokens,
        seconds,
        callback_ms_per_step: 1e3 * (callback_s - loop_pass_s) / a.steps as f64,
        pass_seconds: pass_s,
        step_ms,
        curve,
    })
}
