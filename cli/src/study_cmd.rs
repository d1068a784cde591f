//! `birdbone study`: the quality table. One model load, one calibration, then for each pruning
//! setting: restore the dense weights, prune through the plugins, measure perplexity.

use std::{collections::BTreeMap, time::Instant};

use birdbone_llama::{collect_stats, perplexity, token_windows, Loaded};
use birdbone_tch::{ParamFilter, PassConfig, PassInputs, PluginRegistry, Pruner};
use tch::Tensor;

use crate::{
    model_io::{parse_device, parse_kind},
    plugins_cmd::plugin_dirs,
};

#[derive(clap::Args)]
pub struct Args {
    /// Model folder, or a cached hub id.
    #[arg(long)]
    pub model: String,
    /// Evaluation windows (of 512 tokens, wiki.utf8).
    #[arg(long, default_value_t = 64)]
    pub windows: usize,
    /// Calibration windows (of 512 tokens, c4.utf8).
    #[arg(long, default_value_t = 32)]
    pub calibration: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Plugin folder (repeatable). Default: the birdbone executable's folder and its plugins/.
    #[arg(long = "plugins")]
    pub plugin_dirs: Vec<std::path::PathBuf>,
}

struct Setting {
    label: &'static str,
    scorer: &'static str,
    strategy: &'static str,
    settings: &'static [(&'static str, &'static str)],
    sparsity: f64,
    nm: Option<(u32, u32)>,
}

const SETTINGS: &[Setting] = &[
    Setting {
        label: "magnitude 50%",
        scorer: "magnitude",
        strategy: "layerwise",
        settings: &[],
        sparsity: 0.5,
        nm: None,
    },
    Setting {
        label: "wanda 50%",
        scorer: "wanda",
        strategy: "layerwise",
        settings: &[("scope", "row")],
        sparsity: 0.5,
        nm: None,
    },
    Setting {
        label: "magnitude 60%",
        scorer: "magnitude",
        strategy: "layerwise",
        settings: &[],
        sparsity: 0.6,
        nm: None,
    },
    Setting {
        label: "wanda 60%",
        scorer: "wanda",
        strategy: "layerwise",
        settings: &[("scope", "row")],
        sparsity: 0.6,
        nm: None,
    },
    Setting {
        label: "magnitude 70%",
        scorer: "magnitude",
        strategy: "layerwise",
        settings: &[],
        sparsity: 0.7,
        nm: None,
    },
    Setting {
        label: "wanda 70%",
        scorer: "wanda",
        strategy: "layerwise",
        settings: &[("scope", "row")],
        sparsity: 0.7,
        nm: None,
    },
    Setting {
        label: "magnitude 2:4",
        scorer: "magnitude",
        strategy: "nm",
        settings: &[],
        sparsity: 0.5,
        nm: Some((2, 4)),
    },
    Setting {
        label: "wanda 2:4",
        scorer: "wanda",
        strategy: "nm",
        settings: &[],
        sparsity: 0.5,
        nm: Some((2, 4)),
    },
    Setting {
        label: "magnitude 4:8",
        scorer: "magnitude",
        strategy: "nm",
        settings: &[],
        sparsity: 0.5,
        nm: Some((4, 8)),
    },
    Setting {
        label: "wanda 4:8",
        scorer: "wanda",
        strategy: "nm",
        settings: &[],
        sparsity: 0.5,
        nm: Some((4, 8)),
    },
];

pub fn run(a: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let m = Loaded::load(&a.model, parse_device(&a.device)?, parse_kind(&a.dtype)?)?;
    let reg = PluginRegistry::discover(&plugin_dirs(&a.plugin_dirs));
    let eval = token_windows(
        &m.tokenizer,
        &birdbone_llama::read_text("wiki.utf8")?,
        512,
        a.windows,
    )?;
    let calib = token_windows(
        &m.tokenizer,
        &birdbone_llama::read_text("c4.utf8")?,
        512,
        a.calibration,
    )?;
    eprintln!("calibrating on {} windows of c4.utf8 ...", a.calibration);
    let (stats, cal) = collect_stats(&m.model, &calib, 4)?;
    let filter = ParamFilter::default();
    let weights = filter.select(m.model.var_store())?;
    let pristine: Vec<Tensor> = weights.iter().map(|(_, t)| t.copy()).collect();
    let restore = || {
        let _g = tch::no_grad_guard();
        for ((_, w), p) in weights.iter().zip(&pristine) {
            w.shallow_clone().copy_(p);
        }
    };
    eprintln!("dense model ...");
    let dense = perplexity(&m.model, &eval, 4)?;
    let mut rows = vec![("dense".to_string(), dense.ppl, 0.0)];
    for s in SETTINGS {
        restore();
        let st: BTreeMap<String, String> = s
            .settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pruner = Pruner::new(&reg, s.scorer, &BTreeMap::new(), s.strategy, &st)?;
        let cfg = PassConfig {
            sparsity: s.sparsity,
            nm: s.nm,
            keep_masks: false,
            filter: filter.clone(),
        };
        let (report, _) = pruner.run(
            m.model.var_store(),
            &cfg,
            PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )?;
        eprintln!("{} ...", s.label);
        let p = perplexity(&m.model, &eval, 4)?;
        rows.push((s.label.to_string(), p.ppl, report.sparsity));
    }
    restore();
    println!(
        "Perplexity of {} on wiki.utf8 ({} windows of 512 tokens; calibration: {} windows of c4.utf8, {} tokens), {} on {:?}:\n",
        m.dir.display(),
        a.windows,
        a.calibration,
        cal.tokens,
        a.dtype,
        m.model.device()
    );
    println!("| setting | sparsity of Linear weights | perplexity |\n| --- | ---: | ---: |");
    for (label, ppl, sp) in &rows {
        println!("| {label} | {:.1}% | {ppl:.2} |", 100.0 * sp);
    }
    println!("\n(magnitude: `magnitude` + `layerwise`, the same sparsity in every weight; wanda: `wanda` + `layerwise scope=row`, as in the paper; N:M: `nm`; {:.0} s in all)", started.elapsed().as_secs_f64());
    Ok(())
}
