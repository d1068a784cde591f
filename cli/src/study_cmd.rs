//! `birdbone study`: the quality table. One model load, one calibration, then for each pruning
//! setting: restore the dense weights, prune through the plugins, measure perplexity.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use birdbone_tch::{selected, ParamFilter, PassConfig, PassInputs, Pruner};
use serde_json::json;
use tch::Tensor;

use crate::{
    common::{self, CalibrationArgs, EvalArgs, ModelArgs, PluginArgs},
    plot::Series,
    progress::{note, Progress},
};

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
    /// Draw perplexity against sparsity per method into this folder (perplexity.svg and
    /// perplexity.png).
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Print the table as JSON (docs/cli.md) instead of text.
    #[arg(long)]
    pub json: bool,
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
    a.eval.validate()?;
    let cal_cfg = a.calibration.apply(Default::default());
    anyhow::ensure!(
        cal_cfg.mode == birdbone_host::recipe::CalibrationMode::OnePass,
        "study calibrates once for every setting: --calibration-mode sequential is not available here (use prune)"
    );
    anyhow::ensure!(
        cal_cfg.windows >= 1 && cal_cfg.length >= 2,
        "--calibration-windows must be at least 1 and --calibration-length at least 2"
    );
    let reg = a.plugins.registry()?;
    for s in SETTINGS {
        Pruner::new(
            &reg,
            s.scorer,
            &BTreeMap::new(),
            s.strategy,
            &BTreeMap::new(),
        )?;
    }
    let m = a.model.load()?;
    let eval = a.eval.windows_of(&m)?;
    let calib = common::text_windows(&m, &cal_cfg.text, cal_cfg.length, cal_cfg.windows)?;
    let (stats, cal) = common::calibrate(&m, &calib, cal_cfg.batch)?;
    let filter = ParamFilter::default();
    let weights = selected(m.model.var_store(), &filter)?;
    let pristine: Vec<Tensor> = weights.iter().map(|(_, t)| t.copy()).collect();
    let restore = || {
        let _g = tch::no_grad_guard();
        for ((_, w), p) in weights.iter().zip(&pristine) {
            w.shallow_clone().copy_(p);
        }
    };
    let mut bar = Progress::new("study", SETTINGS.len() as u64 + 1, "settings");
    let quiet = |label: &str| {
        note!("{label} ...");
    };
    quiet("dense");
    let dense = birdbone_llama::perplexity(&m.model, &eval, a.eval.batch)?;
    bar.set(1);
    let mut rows = vec![Row {
        label: "dense".into(),
        scorer: None,
        strategy: None,
        pattern: None,
        sparsity: 0.0,
        perplexity: dense.ppl,
    }];
    for (i, s) in SETTINGS.iter().enumerate() {
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
            allocation: None,
        };
        let (report, _) = pruner.run(
            m.model.var_store(),
            &cfg,
            PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )?;
        let p = birdbone_llama::perplexity(&m.model, &eval, a.eval.batch)?;
        rows.push(Row {
            label: s.label.into(),
            scorer: Some(s.scorer.into()),
            strategy: Some(s.strategy.into()),
            pattern: s.nm.map(|(n, m)| format!("{n}:{m}")),
            sparsity: report.sparsity,
            perplexity: p.ppl,
        });
        bar.set(i as u64 + 2);
    }
    bar.finish();
    restore();
    if let Some(dir) = &a.plot {
        let title = format!(
            "Perplexity against sparsity: {} ({} windows of {} tokens of {})",
            m.dir
                .file_name()
                .map_or("model".into(), |f| f.to_string_lossy().into_owned()),
            a.eval.windows,
            a.eval.window,
            a.eval.text
        );
        let series = plot_series(&rows);
        for ext in ["svg", "png"] {
            let path = dir.join(format!("perplexity.{ext}"));
            crate::plot::perplexity_vs_sparsity(&series, &title, &path)?;
            note!("drew {}", path.display());
        }
    }
    if a.json {
        return common::print_json(&json!({
            "command": "study",
            "model": a.model.model,
            "source": m.dir,
            "text": a.eval.text,
            "window": a.eval.window,
            "windows": a.eval.windows,
            "calibration": {"text": cal_cfg.text, "windows": cal.windows, "length": cal_cfg.length, "tokens": cal.tokens},
            "device": format!("{:?}", m.model.device()),
            "dtype": a.model.dtype,
            "rows": rows,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    println!(
        "Perplexity of {} on {} ({} windows of {} tokens; calibration: {} windows of {}, {} tokens), {} on {:?}:\n",
        m.dir.display(),
        a.eval.text,
        a.eval.windows,
        a.eval.window,
        cal.windows,
        cal_cfg.text,
        cal.tokens,
        a.model.dtype,
        m.model.device()
    );
    println!("| setting | sparsity of Linear weights | perplexity |\n| --- | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.1}% | {:.2} |",
            r.label,
            100.0 * r.sparsity,
            r.perplexity
        );
    }
    println!("\n(magnitude: `magnitude` + `layerwise`, the same sparsity in every weight; wanda: `wanda` + `layerwise scope=row`, as in the paper; N:M: `nm`; {:.0} s in all)", started.elapsed().as_secs_f64());
    Ok(())
}

/// One line of the table.
#[derive(serde::Serialize)]
struct Row {
    label: String,
    scorer: Option<String>,
    strategy: Option<String>,
    pattern: Option<String>,
    sparsity: f64,
    perplexity: f64,
}

/// Per scorer: its unstructured settings as a line from the dense point, and its N:M settings
/// as markers.
fn plot_series(rows: &[Row]) -> Vec<Series> {
    let dense = rows.iter().find(|r| r.scorer.is_none());
    let mut out = vec![];
    for scorer in ["magnitude", "wanda"] {
        let mut line: Vec<(f64, f64)> =
            dense.map(|d| vec![(0.0, d.perplexity)]).unwrap_or_default();
        line.extend(
            rows.iter()
                .filter(|r| r.scorer.as_deref() == Some(scorer) && r.pattern.is_none())
                .map(|r| (100.0 * r.sparsity, r.perplexity)),
        );
        out.push(Series {
            name: format!("{scorer} (unstructured)"),
            points: line,
            line: true,
        });
        let nm: Vec<(f64, f64)> = rows
            .iter()
            .filter(|r| r.scorer.as_deref() == Some(scorer) && r.pattern.is_some())
            .map(|r| (100.0 * r.sparsity, r.perplexity))
            .collect();
        if !nm.is_empty() {
            out.push(Series {
                name: format!("{scorer} (2:4, 4:8)"),
                points: nm,
                line: false,
            });
        }
    }
    out
}
