use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context;
use birdbone_llama::checkpoint;
use birdbone_tch::{ParamFilter, PassConfig, PassInputs, PluginRegistry, Pruner};

use crate::{
    model_io::{parse_device, parse_kind},
    plugins_cmd::plugin_dirs,
};

#[derive(clap::Args)]
pub struct Args {
    /// The model folder (config.json, model.safetensors or shards, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// The scorer component.
    #[arg(long, default_value = "magnitude")]
    scorer: String,
    /// The strategy component.
    #[arg(long, default_value = "global")]
    strategy: String,
    /// Fraction of the selected weights to prune.
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// N:M pattern for strategies that use one, e.g. 2:4.
    #[arg(long)]
    pattern: Option<String>,
    /// Component parameter `key=value`, or `scorer.key=value` / `strategy.key=value` (repeatable).
    #[arg(long = "param")]
    params: Vec<String>,
    /// Only prune parameters matching this glob (repeatable; default: 2-D Linear weights).
    #[arg(long)]
    include: Vec<String>,
    /// Never prune parameters matching this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
    /// Where to write the pruned model, masks.safetensors and report.json.
    #[arg(long)]
    out: PathBuf,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Element type to prune in: f32, f16 or bf16 (default: as stored).
    #[arg(long)]
    dtype: Option<String>,
    /// Plugin folder (repeatable). Default: the birdbone executable's folder and its plugins/.
    #[arg(long = "plugins")]
    plugin_dirs: Vec<PathBuf>,
}

/// Splits `--param` values between the scorer and the strategy by the parameters each declares.
fn route_params(
    reg: &PluginRegistry,
    scorer: &str,
    strategy: &str,
    params: &[String],
) -> anyhow::Result<(BTreeMap<String, String>, BTreeMap<String, String>)> {
    let declares = |component: &str, key: &str| {
        reg.component(component)
            .is_some_and(|c| c.info.params.iter().any(|p| p.name.as_str() == key))
    };
    let (mut sc, mut st) = (BTreeMap::new(), BTreeMap::new());
    for p in params {
        let (key, value) = p
            .split_once('=')
            .with_context(|| format!("--param '{p}' is not key=value"))?;
        if let Some(k) = key.strip_prefix("scorer.") {
            sc.insert(k.to_string(), value.to_string());
        } else if let Some(k) = key.strip_prefix("strategy.") {
            st.insert(k.to_string(), value.to_string());
        } else {
            match (declares(scorer, key), declares(strategy, key)) {
                (true, false) => drop(sc.insert(key.to_string(), value.to_string())),
                (false, true) => drop(st.insert(key.to_string(), value.to_string())),
                (true, true) => anyhow::bail!("both '{scorer}' and '{strategy}' take '{key}': write scorer.{key}= or strategy.{key}="),
                (false, false) => anyhow::bail!("neither '{scorer}' nor '{strategy}' takes a parameter '{key}' (see `birdbone plugins`)"),
            }
        }
    }
    Ok((sc, st))
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let device = parse_device(&a.device)?;
    let kind = a.dtype.as_deref().map(parse_kind).transpose()?;
    let nm = match &a.pattern {
        None => None,
        Some(p) => {
            let (n, m) = p
                .split_once(':')
                .with_context(|| format!("--pattern '{p}' is not N:M"))?;
            Some((
                n.parse().context("N of --pattern")?,
                m.parse().context("M of --pattern")?,
            ))
        }
    };
    let reg = PluginRegistry::discover(&plugin_dirs(&a.plugin_dirs));
    for r in reg.rejected() {
        eprintln!(
            "warning: plugin {} rejected: {}",
            r.path.display(),
            r.reason
        );
    }
    let (sc, st) = route_params(&reg, &a.scorer, &a.strategy, &a.params)?;
    let mut pruner = Pruner::new(&reg, &a.scorer, &sc, &a.strategy, &st)?;

    eprintln!("loading {} onto {device:?} ...", a.model.display());
    let params = checkpoint::load_dir(&a.model, kind, device)?;
    let config = PassConfig {
        sparsity: a.sparsity,
        nm,
        keep_masks: true,
        filter: ParamFilter {
            include: a.include,
            exclude: a.exclude,
        },
    };
    eprintln!("pruning with {} + {} ...", a.scorer, a.strategy);
    let (report, masks) = pruner.run(&params, &config, PassInputs::default())?;
    print!("{}", report.to_table());

    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    checkpoint::save(&params, &a.out.join("model.safetensors"))?;
    masks.save(&a.out.join("masks.safetensors"))?;
    std::fs::write(
        a.out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        let src = a.model.join(f);
        if src.exists() {
            std::fs::copy(&src, a.out.join(f)).with_context(|| format!("copying {f}"))?;
        }
    }
    eprintln!(
        "wrote {} (model.safetensors, masks.safetensors, report.json)",
        a.out.display()
    );
    Ok(())
}
