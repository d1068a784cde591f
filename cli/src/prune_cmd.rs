//! `birdbone prune`: a recipe (and flags over it) resolved and checked before the model is
//! loaded; calibration when the scorer needs activation statistics (one-pass or sequential);
//! one pass through the plugins; a model folder written for transformers and vLLM.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use birdbone_host::{
    recipe::{
        ByteSize, Calibration, CalibrationMode, ComponentSpec, DeviceSpec, Dtype, NmPattern, Scalar,
    },
    PassReport, Recipe,
};
use birdbone_llama::{calibrate, checkpoint, for_each_block_calibrated, resolve_model_dir, Loaded};
use birdbone_tch::{ActivationStats, MaskSet, PassInputs, PluginRegistry, Pruner, UndoPolicy};
use serde_json::json;
use tch::Tensor;

use crate::{
    common::{self, CalibrationArgs, OutputArgs, PluginArgs},
    output,
    progress::{note, Progress},
};

#[derive(clap::Args)]
pub struct Args {
    /// A recipe: YAML or JSON, Birdbone's (docs/recipe.schema.json) or llm-compressor's.
    /// Flags override its fields.
    #[arg(long, value_name = "FILE")]
    recipe: Option<PathBuf>,
    /// The model: a folder, or a hub id org/name[@revision] in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// The folder to write (overrides the recipe's output.dir).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The scorer component [recipe default: magnitude].
    #[arg(long)]
    scorer: Option<String>,
    /// The strategy component [recipe default: global].
    #[arg(long)]
    strategy: Option<String>,
    /// Fraction of the selected weights to prune, 0 to 1 [recipe default: 0.5].
    #[arg(long, value_parser = parse_sparsity)]
    sparsity: Option<f64>,
    /// An allocator: a sparsity for each matrix before selection, exact over the model
    /// (uniform, owl, birdbone). Its parameters: --param allocator.KEY=VALUE.
    #[arg(long, conflicts_with = "allocation")]
    allocator: Option<String>,
    /// Replay a saved allocation (a pruned model's allocation.json) instead of an allocator.
    #[arg(long, value_name = "FILE")]
    allocation: Option<PathBuf>,
    /// N:M pattern (N kept of every M), e.g. 2:4, for strategies that produce one (nm).
    #[arg(long)]
    pattern: Option<NmPattern>,
    /// Component parameter `key=value`, or `scorer.key=value` / `strategy.key=value` /
    /// `allocator.key=value` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// Only prune parameters matching this glob or `re:` module regex (repeatable; replaces the
    /// recipe's list; default: the Linear weights of the blocks).
    #[arg(long, value_name = "PATTERN")]
    include: Vec<String>,
    /// Never prune parameters matching this pattern (repeatable; replaces the recipe's list).
    #[arg(long, value_name = "PATTERN")]
    exclude: Vec<String>,
    #[command(flatten)]
    calibration: CalibrationArgs,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Element type to prune in and write: f32, f16, bf16 [default: as stored].
    #[arg(long)]
    dtype: Option<Dtype>,
    #[command(flatten)]
    written: OutputArgs,
    #[command(flatten)]
    plugins: PluginArgs,
    /// Resolve the recipe, plugins and parameter selection, print what would be pruned, and
    /// stop: nothing is loaded or written.
    #[arg(long)]
    dry_run: bool,
    /// Draw the sparsity of every layer by matrix type to this file (.svg or .png).
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Print the result as JSON (docs/cli.md) instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_sparsity(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "{v} is not between 0 and 1 (a fraction: 0.5 prunes half)"
        ))
    }
}

/// The recipe file with the flags applied.
fn effective_recipe(a: &Args, reg: &PluginRegistry) -> anyhow::Result<Recipe> {
    let mut r = match &a.recipe {
        Some(p) => Recipe::from_file(p)?,
        None => Recipe::default(),
    };
    // A component named anew drops the recipe's parameters for the old one.
    if let Some(s) = &a.scorer {
        if *s != r.scorer.name {
            r.scorer = ComponentSpec::named(s);
        }
    }
    if let Some(s) = &a.strategy {
        if *s != r.strategy.name {
            r.strategy = ComponentSpec::named(s);
        }
    }
    if let Some(s) = a.sparsity {
        r.sparsity = s;
    }
    if a.pattern.is_some() {
        r.pattern = a.pattern;
    }
    if let Some(n) = &a.allocator {
        if r.allocator.as_ref().is_none_or(|c| c.name != *n) {
            r.allocator = Some(ComponentSpec::named(n));
        }
        r.allocation = None;
    }
    if a.allocation.is_some() {
        r.allocation = a.allocation.clone();
        r.allocator = None;
    }
    if !a.include.is_empty() {
        r.include = a.include.clone();
    }
    if !a.exclude.is_empty() {
        r.exclude = a.exclude.clone();
    }
    if a.calibration.any() {
        r.calibration = Some(
            a.calibration
                .apply(r.calibration.clone().unwrap_or_default()),
        );
    }
    if a.device.is_some() {
        r.device = a.device;
    }
    if a.dtype.is_some() {
        r.dtype = a.dtype;
    }
    if a.written.max_shard_size.is_some() {
        r.output.max_shard_size = a.written.max_shard_size;
    }
    if a.out.is_some() {
        r.output.dir = a.out.clone();
    }
    route_params(reg, &mut r, &a.params)?;
    r.validate()?;
    Ok(r)
}

/// Puts `--param` values on the scorer or the strategy, by the parameters each declares.
fn route_params(reg: &PluginRegistry, r: &mut Recipe, params: &[String]) -> anyhow::Result<()> {
    let declares = |component: &str, key: &str| {
        reg.component(component)
            .is_some_and(|c| c.info.params.iter().any(|p| p.name.as_str() == key))
    };
    for p in params {
        let (key, value) = p
            .split_once('=')
            .with_context(|| format!("--param '{p}' is not key=value"))?;
        let value = Scalar::Text(value.to_string());
        let (sc, st) = (r.scorer.name.clone(), r.strategy.name.clone());
        if let Some(k) = key.strip_prefix("scorer.") {
            r.scorer.params.insert(k.into(), value);
        } else if let Some(k) = key.strip_prefix("allocator.") {
            let Some(alloc) = r.allocator.as_mut() else {
                anyhow::bail!("--param {p} sets an allocator parameter, but no allocator is given (--allocator)");
            };
            alloc.params.insert(k.into(), value);
        } else if let Some(k) = key.strip_prefix("strategy.") {
            r.strategy.params.insert(k.into(), value);
        } else {
            match (declares(&sc, key), declares(&st, key)) {
                (true, false) => drop(r.scorer.params.insert(key.into(), value)),
                (false, true) => drop(r.strategy.params.insert(key.into(), value)),
                (true, true) => anyhow::bail!(
                    "both '{sc}' and '{st}' take '{key}': write scorer.{key}= or strategy.{key}="
                ),
                (false, false) => anyhow::bail!(
                    "neither '{sc}' nor '{st}' takes a parameter '{key}' (see `birdbone plugins`)"
                ),
            }
        }
    }
    Ok(())
}

/// What the components make of the recipe: every combination that would be ignored is an
/// error naming it; a scorer that needs statistics gets the default calibration.
fn check_components(reg: &PluginRegistry, r: &mut Recipe) -> anyhow::Result<()> {
    // Creating the components checks their names and parameters.
    Pruner::from_recipe(reg, r)?;
    let scorer = reg.component(&r.scorer.name).expect("created above");
    let strategy = reg.component(&r.strategy.name).expect("created above");
    let inputs = scorer.info.capabilities.inputs.0;
    // SparseGPT-like strategies need XᵀX of every Linear's inputs: a calibration, sequential by
    // default as in the paper.
    let needs_hessians = strategy
        .info
        .capabilities
        .inputs
        .contains(birdbone_host_api::InputSet::HESSIAN);
    // An allocator that measures each layer's load runs the model on calibration text.
    let allocator_needs_load = r.allocator.as_ref().is_some_and(|a| {
        reg.component(&a.name).is_some_and(|c| {
            c.info
                .capabilities
                .inputs
                .contains(birdbone_host_api::InputSet::LOAD)
        })
    });
    let needs_stats = inputs & 1 != 0 || needs_hessians || allocator_needs_load;
    if inputs & 2 != 0 {
        anyhow::bail!(
            "scorer '{}' needs gradients, which only a training loop has: use it through the fine-tuning callback",
            r.scorer.name
        );
    }
    let nm_capable = strategy
        .info
        .capabilities
        .granularity
        .members()
        .contains(&birdbone_host_api::Granularity::NM);
    if let Some(p) = r.pattern {
        if !nm_capable {
            anyhow::bail!(
                "pattern {p} asks for N:M sparsity but strategy '{}' does not produce it: use --strategy nm, or drop the pattern",
                r.strategy.name
            );
        }
        for k in ["n", "m"] {
            if r.strategy.params.contains_key(k) {
                anyhow::bail!(
                    "both pattern {p} and the strategy parameter '{k}' set the N:M pattern: give one"
                );
            }
        }
    }
    match (&r.calibration, needs_stats) {
        (None, true) => {
            r.calibration = Some(Calibration {
                mode: if needs_hessians {
                    CalibrationMode::Sequential
                } else {
                    CalibrationMode::OnePass
                },
                ..Calibration::default()
            })
        }
        (Some(_), false) => anyhow::bail!(
            "calibration is set, but neither scorer '{}' nor strategy '{}' uses calibration statistics: drop the calibration or choose a component that needs it (wanda, ria, sparsegpt)",
            r.scorer.name,
            r.strategy.name
        ),
        _ => {}
    }
    if (r.allocator.is_some() || r.allocation.is_some()) && r.strategy.name == "global" {
        anyhow::bail!("an allocation sets each matrix's count, and the 'global' strategy sets them all with one threshold: use a per-parameter strategy (layerwise) with an allocator");
    }
    if let Some(c) = &r.calibration {
        if c.mode == CalibrationMode::Sequential && r.strategy.name == "global" {
            anyhow::bail!("sequential calibration prunes one block per pass, so the 'global' strategy would rank within a block: use one-pass calibration, or a per-parameter strategy (layerwise, nm)");
        }
    }
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if a.dry_run && a.plot.is_some() {
        anyhow::bail!("--plot draws what a pass pruned; a --dry-run prunes nothing: give one");
    }
    if let Some(p) = &a.plot {
        let ext = p.extension().and_then(|e| e.to_str());
        anyhow::ensure!(
            matches!(ext, Some("svg" | "png")),
            "--plot {}: a picture is .svg or .png",
            p.display()
        );
    }
    let reg = a.plugins.registry()?;
    let mut recipe = effective_recipe(&a, &reg)?;
    check_components(&reg, &mut recipe)?;
    let out = recipe.output.dir.clone();
    if !a.dry_run && out.is_none() {
        anyhow::bail!(
            "no output folder: pass --out DIR, or set output.dir in the recipe (or --dry-run)"
        );
    }
    let device = common::device(recipe.device.unwrap_or(DeviceSpec::Auto))?;
    let text = match &recipe.calibration {
        Some(c) => Some(
            birdbone_llama::read_text(&c.text)
                .with_context(|| format!("calibration text '{}'", c.text))?,
        ),
        None => None,
    };
    let dir = resolve_model_dir(&a.model)?;
    if let (Some(out), false) = (&out, a.dry_run) {
        output::check_target(out, &dir, a.written.overwrite)?;
    }
    let entries = checkpoint::read_header(&dir)?;
    // config.json is copied beside the weights: a missing or broken one fails now, not after
    // the pass.
    let config_path = dir.join("config.json");
    serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", config_path.display()))?;
    let mut cfg = recipe.pass_config();
    cfg.target()?;
    if let Some(path) = &recipe.allocation {
        let a = birdbone_host::Allocation::load(path)?;
        if (a.sparsity - cfg.sparsity).abs() > 1e-12 {
            anyhow::bail!(
                "{} allocates sparsity {}, but this pass asks for {}: give the same sparsity, or run an allocator",
                path.display(),
                a.sparsity,
                cfg.sparsity
            );
        }
        note!(
            "replaying the allocation by '{}' from {}",
            a.allocator,
            path.display()
        );
        cfg.allocation = Some(std::sync::Arc::new(a));
    }
    let chosen: Vec<&checkpoint::TensorEntry> = entries
        .iter()
        .filter(|e| cfg.filter.selects(&e.name, &e.shape))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!(
            "the recipe selects no parameter of {} (include {:?}, exclude {:?})",
            dir.display(),
            recipe.include,
            recipe.exclude
        );
    }
    if recipe
        .calibration
        .as_ref()
        .is_some_and(|c| c.mode == CalibrationMode::Sequential)
    {
        // Sequential calibration prunes block by block: a selected parameter outside the
        // decoder blocks would never be reached.
        if let Some(e) = chosen.iter().find(|e| {
            birdbone_host::role_of(&e.name)
                .layer
                .into_option()
                .is_none()
        }) {
            anyhow::bail!(
                "sequential calibration prunes the decoder blocks one by one, but the recipe also selects '{}', outside them: exclude it or use one-pass calibration",
                e.name
            );
        }
    }
    if a.dry_run {
        return dry_run(&a, &reg, &recipe, &dir, &chosen, entries.len());
    }
    let out = out.expect("checked above");
    // Without --dtype each tensor keeps its stored type; the model runtime (calibration) needs
    // one type: the first floating one stored.
    let stored = entries
        .iter()
        .find(|e| matches!(e.dtype.as_str(), "F32" | "F16" | "BF16"))
        .map(|e| {
            e.dtype
                .to_lowercase()
                .parse::<Dtype>()
                .expect("a float type")
        })
        .unwrap_or(Dtype::F32);
    let mut pruner = Pruner::from_recipe(&reg, &recipe)?;
    // The model here is a copy in memory: a failed pass writes nothing, so there is nothing to
    // roll back, and the journal's copy would only cost time.
    pruner.set_undo(UndoPolicy {
        rollback: false,
        ..Default::default()
    })?;

    // The type the weights are loaded (and written) in: --dtype, else as stored (one type for
    // the model runtime, each tensor's own without calibration).
    let calibrated = recipe.calibration.is_some();
    let load_as = recipe.dtype.or(calibrated.then_some(stored));
    note!(
        "loading {} ({} tensors) onto {device:?} in {} ...",
        dir.display(),
        entries.len(),
        load_as.map_or("the stored types".to_string(), |d| d.to_string())
    );
    let t_load = Instant::now();
    let (tensors, report, masks, calibration) = match (&recipe.calibration, text) {
        (Some(c), Some(text)) => {
            let m = Loaded::load(
                dir.to_str().context("a folder name that is UTF-8")?,
                device,
                common::kind(stored_or(load_as, stored)),
            )?;
            note!("loaded in {:.1} s", t_load.elapsed().as_secs_f64());
            let windows = birdbone_llama::token_windows(&m.tokenizer, &text, c.length, c.windows)
                .with_context(|| format!("calibration text '{}'", c.text))?;
            let (report, masks, cal) =
                prune_calibrated(&mut pruner, &m, &windows, c, &mut cfg, &recipe)?;
            let mut vars: Vec<(String, Tensor)> =
                m.model.var_store().variables().into_iter().collect();
            vars.sort_by(|x, y| x.0.cmp(&y.0));
            (vars, report, masks, Some(cal))
        }
        _ => {
            let params = checkpoint::load_dir(&dir, load_as.map(common::kind), device)?;
            note!(
                "loaded in {:.1} s; pruning {} parameters with {} + {} ...",
                t_load.elapsed().as_secs_f64(),
                chosen.len(),
                recipe.scorer.name,
                recipe.strategy.name
            );
            if recipe.allocator.is_some() {
                crate::allocation::allocate(&mut pruner, &params, &mut cfg, PassInputs::default())?;
            }
            let spin = Progress::spinner("prune");
            let (report, masks) = pruner.run(&params, &cfg, PassInputs::default())?;
            spin.finish();
            (params, report, masks, None)
        }
    };
    note!(
        "pruned {} of {} weights ({:.2}%) in {} parameters: plan {:.3} s, commit {:.3} s",
        report.pruned,
        report.total,
        100.0 * report.sparsity,
        report.params.len(),
        report.plan_seconds,
        report.commit_seconds
    );

    let t_write = Instant::now();
    let spin = Progress::spinner("write");
    let provenance = output::provenance(
        Some(&reg),
        &[&recipe.scorer.name, &recipe.strategy.name],
        &a.model,
        &dir,
    );
    let saved = output::write(
        &out,
        &output::ModelOut {
            source: &dir,
            tensors: &tensors,
            dtype: load_as,
            max_shard_bytes: recipe
                .output
                .max_shard_size
                .unwrap_or(ByteSize::DEFAULT_SHARD)
                .0,
            masks: Some(&masks),
            recipe: Some(&recipe),
            report: Some(&report),
            allocation: cfg.allocation.as_deref(),
            provenance,
        },
    )?;
    spin.clear();
    note!(
        "wrote {} ({} weight file(s), {:.2} GB) in {:.1} s",
        out.display(),
        saved.files.len(),
        saved.total_size as f64 / 1e9,
        t_write.elapsed().as_secs_f64()
    );
    if let Some(p) = &a.plot {
        let title = format!(
            "Sparsity per layer: {} + {}, {:.1}% of {:.1} M weights",
            recipe.scorer.name,
            recipe.strategy.name,
            100.0 * report.sparsity,
            report.total as f64 / 1e6
        );
        crate::plot::sparsity_per_layer(&report, &title, p)?;
        note!("drew {}", p.display());
    }
    if a.json {
        return common::print_json(&json!({
            "command": "prune",
            "dry_run": false,
            "model": a.model,
            "source": dir,
            "out": out,
            "recipe": recipe,
            "calibration": calibration,
            "report": output::report_json(&report),
            "allocation": cfg.allocation.as_deref(),
            "files": saved.files,
            "sharded": saved.sharded,
            "bytes": saved.total_size,
            "plot": a.plot,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    print_layers(&report);
    println!(
        "{}: {:.2}% of {} weights pruned with {} + {}; written to {}",
        a.model,
        100.0 * report.sparsity,
        report.total,
        recipe.scorer.name,
        recipe.strategy.name,
        out.display()
    );
    Ok(())
}

fn stored_or(d: Option<Dtype>, stored: Dtype) -> Dtype {
    d.unwrap_or(stored)
}

/// Calibration and pruning: one-pass (statistics of the dense model, then one pass), or
/// sequential (block by block).
fn prune_calibrated(
    pruner: &mut Pruner,
    m: &Loaded,
    windows: &[Vec<i64>],
    c: &Calibration,
    cfg: &mut birdbone_host::PassConfig,
    recipe: &Recipe,
) -> anyhow::Result<(PassReport, MaskSet, birdbone_llama::CalibrationReport)> {
    let vs = m.model.var_store();
    let hessians = pruner.needs_hessians();
    match c.mode {
        CalibrationMode::OnePass => {
            let mut bar = Progress::new("calibration", windows.len() as u64, "windows");
            let (got, cal) = calibrate(&m.model, windows, c.batch, hessians, &mut |d| {
                bar.set(d as u64)
            })?;
            bar.finish();
            let stats = ActivationStats::from_parts(got.sums, got.hessians);
            if recipe.allocator.is_some() {
                crate::allocation::allocate_calibrated(pruner, m, windows, c, cfg, &stats)?;
            }
            let spin = Progress::spinner("prune");
            let (report, masks) = pruner.run(
                vs,
                cfg,
                PassInputs {
                    stats: Some(&stats),
                    ..Default::default()
                },
            )?;
            spin.finish();
            Ok((report, masks, cal))
        }
        CalibrationMode::Sequential => {
            if recipe.allocator.is_some() {
                // The allocation is decided for the whole model before the first block is
                // pruned, on the dense model's statistics (as OWL decides it).
                let mut bar =
                    Progress::new("allocation statistics", windows.len() as u64, "windows");
                let needs_load = pruner
                    .allocator_inputs()
                    .is_some_and(|i| i.contains(birdbone_host_api::InputSet::LOAD));
                let (got, _) = calibrate(
                    &m.model,
                    windows,
                    c.batch,
                    needs_load && hessians,
                    &mut |d| bar.set(d as u64),
                )?;
                bar.finish();
                let stats = ActivationStats::from_parts(got.sums, got.hessians);
                crate::allocation::allocate_calibrated(pruner, m, windows, c, cfg, &stats)?;
            }
            let mut bar = Progress::new("sequential", m.model.num_blocks() as u64, "blocks");
            let mut pass = pruner.sequential(cfg);
            let cal = for_each_block_calibrated(
                &m.model,
                windows,
                c.batch,
                hessians,
                |i, names, got| -> anyhow::Result<()> {
                    let stats = ActivationStats::from_parts(got.sums, got.hessians);
                    pass.block(vs, names, &stats)?;
                    bar.set(i as u64 + 1);
                    Ok(())
                },
            )?;
            bar.finish();
            let (report, masks) = pass.finish()?;
            Ok((report, masks, cal))
        }
    }
}

fn dry_run(
    a: &Args,
    reg: &PluginRegistry,
    recipe: &Recipe,
    dir: &std::path::Path,
    chosen: &[&checkpoint::TensorEntry],
    tensors: usize,
) -> anyhow::Result<()> {
    let weights: i64 = chosen.iter().map(|e| e.shape.iter().product::<i64>()).sum();
    let components = output::provenance(
        Some(reg),
        &[&recipe.scorer.name, &recipe.strategy.name],
        &a.model,
        dir,
    );
    if a.json {
        return common::print_json(&json!({
            "command": "prune",
            "dry_run": true,
            "model": a.model,
            "source": dir,
            "recipe": recipe,
            "plugins": components["plugins"],
            "params": chosen,
            "weights": weights,
            "would_prune": (weights as f64 * recipe.sparsity).round() as i64,
        }));
    }
    println!("# effective recipe\n{}", recipe.to_yaml());
    for p in components["plugins"].as_array().into_iter().flatten() {
        println!(
            "component {} from plugin {} {} (ABI {})",
            p["component"].as_str().unwrap_or("?"),
            p["plugin"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["abi"].as_str().unwrap_or("?")
        );
    }
    println!(
        "\n{} of {} tensors of {} would be pruned:",
        chosen.len(),
        tensors,
        dir.display()
    );
    for e in chosen {
        println!(
            "  {:<56} {:>16} {}",
            e.name,
            format!("{:?}", e.shape),
            e.dtype
        );
    }
    println!(
        "{} weights, about {} to prune at sparsity {}{}; nothing was loaded or written (--dry-run)",
        weights,
        (weights as f64 * recipe.sparsity).round() as i64,
        recipe.sparsity,
        recipe
            .pattern
            .map(|p| format!(" ({p} pattern)"))
            .unwrap_or_default()
    );
    Ok(())
}

/// Sparsity by layer (rows) and matrix type (columns).
fn print_layers(r: &PassReport) {
    let rows = crate::plot::layer_rows(r);
    let mut kinds: Vec<&str> = rows.iter().map(|x| x.kind.as_str()).collect();
    kinds.sort();
    kinds.dedup();
    print!("{:>6}", "layer");
    for k in &kinds {
        print!(" {k:>10}");
    }
    println!();
    let mut layers: Vec<Option<u32>> = rows.iter().map(|x| x.layer).collect();
    layers.dedup();
    for l in layers {
        print!("{:>6}", l.map_or("-".into(), |l| l.to_string()));
        for k in &kinds {
            match rows.iter().find(|x| x.layer == l && x.kind == *k) {
                Some(x) => print!(" {:>9.2}%", 100.0 * x.sparsity),
                None => print!(" {:>10}", ""),
            }
        }
        println!();
    }
}
