//! `birdbone study`: the quality table. One model load, one calibration, then for each pruning
//! setting: restore the dense weights, prune through the plugins, measure perplexity.

use std::{collections::BTreeMap, time::Instant};

use birdbone_llama::{collect_stats, perplexity};
use birdbone_tch::{selected, ActivationStats, ParamFilter, PassConfig, PassInputs, Pruner};
use tch::Tensor;

use crate::model_io::Experiment;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub experiment: Experiment,
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
    let x = &a.experiment;
    let m = x.load()?;
    let reg = x.registry();
    let eval = x.eval_windows(&m)?;
    let calib = x.calibration_windows(&m)?;
    eprintln!("calibrating on {} windows of c4.utf8 ...", x.calibration);
    let (sums, cal) = collect_stats(&m.model, &calib, 4)?;
    let stats = ActivationStats::from(sums);
    let filter = ParamFilter::default();
    let weights = selected(m.model.var_store(), &filter)?;
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
        x.windows,
        x.calibration,
        cal.tokens,
        x.dtype,
        m.model.device()
    );
    println!("| setting | sparsity of Linear weights | perplexity |\n| --- | ---: | ---: |");
    for (label, ppl, sp) in &rows {
        println!("| {label} | {:.1}% | {ppl:.2} |", 100.0 * sp);
    }
    println!("\n(magnitude: `magnitude` + `layerwise`, the same sparsity in every weight; wanda: `wanda` + `layerwise scope=row`, as in the paper; N:M: `nm`; {:.0} s in all)", started.elapsed().as_secs_f64());
    Ok(())
}
