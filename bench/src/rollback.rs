//! `--rollback`: what the rollback journal and the undo history cost a pass. Each path runs
//! with rollback off (the pass alone), on (the default: what a commit overwrites is kept in
//! host memory until it completes) and with one pass kept for undo; runs alternate, on a fresh
//! copy of the weights each time. On the GPU the 7B-shaped weights; with `--device cpu
//! --model DIR` a real checkpoint's Linear weights on the CPU.

use std::{collections::BTreeMap, time::Instant};

use birdbone_tch::{
    ActivationStats, ParamFilter, PassConfig, PassInputs, PluginRegistry, Pruner, UndoPolicy,
};
use tch::Tensor;

/// A path measured: name, scorer, strategy, strategy settings.
type Path = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// One run: pass ms, commit ms, journal ms, journal bytes, bytes kept for undo.
type Sample = (f64, f64, f64, u64, u64);

const PATHS: &[Path] = &[
    ("global", "magnitude", "global", &[]),
    ("wanda-row", "wanda", "layerwise", &[("scope", "row")]),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

/// Device-to-host copy speed into pinned memory (GB/s): the floor of keeping a journal in host
/// memory.
pub fn d2h_bandwidth() -> f64 {
    let dev = tch::Device::Cuda(0);
    let x = Tensor::ones([1i64 << 31], (tch::Kind::Uint8, dev));
    let host = x.to_device_(tch::Device::Cpu, tch::Kind::Uint8, true, false);
    tch::Cuda::synchronize(0);
    let t = Instant::now();
    for _ in 0..3 {
        host.shallow_clone().copy_(&x);
    }
    tch::Cuda::synchronize(0);
    3.0 * x.numel() as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Prints one table row per path and policy.
pub fn run(
    reg: &PluginRegistry,
    params: &[(String, Tensor)],
    stats: &ActivationStats,
    runs: usize,
    sync: &dyn Fn(),
    d2h_gbs: Option<f64>,
) -> anyhow::Result<()> {
    let pristine: Vec<Tensor> = params.iter().map(|(_, w)| w.copy()).collect();
    let restore = || {
        let _g = tch::no_grad_guard();
        for ((_, w), p) in params.iter().zip(&pristine) {
            w.shallow_clone().copy_(p);
        }
        sync();
    };
    let weight_bytes: u64 = params
        .iter()
        .map(|(_, w)| (w.numel() * w.kind().elt_size_in_bytes()) as u64)
        .sum();
    println!(
        "# rollback cost: {:.3} GB of weights; median of {runs} runs each",
        weight_bytes as f64 / 1e9
    );
    if let Some(bw) = d2h_gbs {
        println!("# device-to-host copy into pinned memory: {bw:.1} GB/s, measured in this run");
    }
    println!();
    println!("| path | policy | pass ms | commit ms | journal ms | extra ms | journal GB | undo kept GB |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    let policies = [
        (
            "rollback off",
            UndoPolicy {
                rollback: false,
                ..Default::default()
            },
        ),
        ("rollback on (default)", UndoPolicy::default()),
        (
            "rollback + undo of 1 pass",
            UndoPolicy {
                passes: 1,
                ..Default::default()
            },
        ),
    ];
    for (name, scorer, strategy, st) in PATHS {
        let st: BTreeMap<String, String> = st
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pruners: Vec<Pruner> = policies
            .iter()
            .map(|(_, p)| {
                let mut pr = Pruner::new(reg, scorer, &BTreeMap::new(), strategy, &st)?;
                pr.set_undo(*p)?;
                Ok(pr)
            })
            .collect::<anyhow::Result<_>>()?;
        let cfg = PassConfig {
            sparsity: 0.5,
            nm: None,
            keep_masks: false,
            filter: ParamFilter::default(),
            allocation: None,
        };
        let inputs = PassInputs {
            stats: Some(stats),
            ..Default::default()
        };
        let mut rows: Vec<Vec<Sample>> = vec![vec![]; policies.len()];
        for run in 0..=runs {
            for (i, pr) in pruners.iter_mut().enumerate() {
                restore();
                let t = Instant::now();
                let (report, _) = pr.run(params, &cfg, inputs)?;
                sync();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if run > 0 {
                    rows[i].push((
                        ms,
                        report.commit_seconds * 1e3,
                        report.journal_seconds * 1e3,
                        report.journal_bytes,
                        pr.history().bytes(),
                    ));
                }
            }
        }
        let base = median(rows[0].iter().map(|r| r.0).collect());
        for ((label, _), r) in policies.iter().zip(&rows) {
            let pass = median(r.iter().map(|x| x.0).collect());
            println!(
                "| {name} | {label} | {pass:.2} | {:.2} | {:.2} | {:+.2} | {:.3} | {:.3} |",
                median(r.iter().map(|x| x.1).collect()),
                median(r.iter().map(|x| x.2).collect()),
                pass - base,
                r[0].3 as f64 / 1e9,
                r[0].4 as f64 / 1e9,
            );
            if let (Some(bw), true) = (d2h_gbs, r[0].3 > 0) {
                println!(
                    "|  | (the journal's copy at that speed: {:.0} ms) | | | | | | |",
                    r[0].3 as f64 / 1e9 / bw * 1e3
                );
            }
        }
    }
    Ok(())
}
