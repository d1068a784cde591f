//! Allocation (ABI 1.2): a sparsity per matrix before selection, exact over the model. Every
//! allocator hits `round(s · N)` exactly and keeps its bounds, per-row selections split a
//! matrix's count over its rows, OWL is the published formula, an allocation replays to the
//! same masks, and the command line saves and replays it.

use std::collections::BTreeMap;

use birdbone_llama::{calibrate, token_windows, Loaded};
use birdbone_tch::{ActivationStats, Allocation, MaskSet, PassConfig, PassInputs, Pruner};
use birdbone_tests::*;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

use crate::{
    checks::*,
    cli::{birdbone, fails, ok},
};

fn model() -> Loaded {
    Loaded::load(real_model_dir().to_str().unwrap(), Device::Cpu, Kind::Float).unwrap()
}

/// One-pass Wanda statistics of the dense model on a little c4.
fn stats(m: &Loaded) -> ActivationStats {
    let text = std::fs::read_to_string(real_text("c4.utf8")).unwrap();
    let windows = token_windows(&m.tokenizer, &text, 128, 4).unwrap();
    let (got, _) = calibrate(&m.model, &windows, 2, false, &mut |_| {}).unwrap();
    ActivationStats::from_parts(got.sums, got.hessians)
}

/// Wanda compared within each output row, without an allocator.
fn wanda_per_row() -> Pruner {
    Pruner::new(
        &registry(),
        "wanda",
        &BTreeMap::new(),
        "layerwise",
        &settings(&[("scope", "row")]),
    )
    .unwrap()
}

fn wanda_rows(allocator: &str, params: &[(&str, &str)]) -> Pruner {
    let mut p = wanda_per_row();
    p.set_allocator(&registry(), allocator, &settings(params))
        .unwrap();
    p
}

fn registry() -> birdbone_tch::PluginRegistry {
    builtin_registry()
}

/// Pruned weights of each row of `name`.
fn row_counts(masks: &MaskSet, name: &str) -> Vec<i64> {
    let keep = masks.get(name).unwrap().keep().unwrap();
    let pruned = keep.logical_not().to_kind(Kind::Int64).sum_dim_intlist(
        [1i64].as_slice(),
        false,
        Kind::Int64,
    );
    Vec::<i64>::try_from(&pruned).unwrap()
}

#[test]
fn every_allocator_prunes_exactly_round_s_n_within_its_bounds() {
    let m = model();
    let st = stats(&m);
    let vs = m.model.var_store();
    let inputs = || PassInputs {
        stats: Some(&st),
        ..Default::default()
    };
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let dense = snapshot(&vars);
    // A made-up load for the birdbone allocator (the command-line test measures a real one):
    // layers alternately light and heavy, steeper further in.
    let load_at = |s: f64| -> BTreeMap<String, Vec<(f64, f64)>> {
        (0..m.model.num_blocks())
            .flat_map(|i| {
                let d1 = if i % 2 == 0 { 0.05 } else { 0.5 };
                let k = 5.0 + i as f64 * 0.3;
                let pts = vec![
                    (0.0, 2.0),
                    (s, 2.0 + d1),
                    (s + 0.1, 2.0 + d1 * (k * 0.1f64).exp()),
                ];
                m.model
                    .block_linear_names(i)
                    .into_iter()
                    .map(move |n| (n, pts.clone()))
            })
            .collect()
    };
    let e = wanda_rows("birdbone", &[])
        .allocate(vs, &PassConfig::default(), inputs())
        .unwrap_err()
        .to_string();
    assert!(e.contains("load") && e.contains("birdbone"), "{e}");
    for (allocator, params, bound) in [
        ("uniform", vec![], 0.0),
        // OWL spreads layers over 2λ around a mean at the target: one layer may sit up to 2λ
        // from it.
        ("owl", vec![("lambda", "0.08")], 0.16),
        ("birdbone", vec![("max_shift", "0.1")], 0.1),
    ] {
        for s in [0.5, 0.6, 0.7] {
            let mut p = wanda_rows(allocator, &params);
            let mut cfg = PassConfig {
                sparsity: s,
                ..Default::default()
            };
            let load = load_at(s);
            let a = p
                .allocate(
                    vs,
                    &cfg,
                    PassInputs {
                        load: Some(&load),
                        ..inputs()
                    },
                )
                .unwrap();
            let n: u64 = a.params.iter().map(|p| p.numel).sum();
            let want = (s * n as f64).round() as u64;
            assert_eq!(a.pruned, want, "{allocator} at {s}");
            assert_eq!(a.params.iter().map(|p| p.prune).sum::<u64>(), want);
            for q in &a.params {
                // The host's shift onto the budget and the rounding add at most a weight or so
                // per matrix beyond the allocator's own bound.
                let slack = bound + 1e-3;
                assert!(
                    (q.sparsity() - s).abs() <= slack,
                    "{allocator} at {s}: '{}' at {} is outside {s} +- {bound}",
                    q.name,
                    q.sparsity()
                );
            }
            if allocator != "uniform" {
                let spread = a
                    .params
                    .iter()
                    .map(|q| q.sparsity())
                    .fold((1.0f64, 0.0f64), |(l, h), x| (l.min(x), h.max(x)));
                assert!(
                    spread.1 - spread.0 > 0.02,
                    "{allocator} at {s} allocated all alike: {spread:?}"
                );
            }
            cfg.allocation = Some(std::sync::Arc::new(a.clone()));
            let (report, masks) = p.run(vs, &cfg, inputs()).unwrap();
            assert_eq!(
                report.pruned, want,
                "{allocator} at {s}: the pass prunes the allocation"
            );
            // Per row: the matrix's count split over its rows, the first rows one more.
            for q in a.params.iter().step_by(5) {
                let rows = row_counts(&masks, &q.name);
                let (base, extra) = (q.prune / rows.len() as u64, q.prune % rows.len() as u64);
                for (r, &c) in rows.iter().enumerate() {
                    let want = base + u64::from((r as u64) < extra);
                    assert_eq!(
                        c as u64, want,
                        "{allocator} at {s}: row {r} of '{}'",
                        q.name
                    );
                }
            }
            // Back to the dense model for the next allocation.
            let _g = tch::no_grad_guard();
            for ((_, t), b) in vars.iter().zip(&dense) {
                t.shallow_clone().copy_(b);
            }
        }
    }
}

/// OWL's layer sparsities are the published formula over Wanda scores computed here.
#[test]
fn owl_is_the_published_formula() {
    let m = model();
    let st = stats(&m);
    let vs = m.model.var_store();
    let mut p = wanda_rows("owl", &[("M", "5"), ("lambda", "0.08")]);
    let cfg = PassConfig {
        sparsity: 0.7,
        ..Default::default()
    };
    let inputs = PassInputs {
        stats: Some(&st),
        ..Default::default()
    };
    let a = p.allocate(vs, &cfg, inputs).unwrap();
    let layers = m.model.num_blocks();
    let weights: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut ratios = Vec::new();
    for l in 0..layers {
        let names = m.model.block_linear_names(l);
        let scores: Vec<Tensor> = names
            .iter()
            .map(|n| {
                let (sq, _) = st.get(n).expect("statistics");
                weights[n].abs() * sq.sqrt().unsqueeze(0)
            })
            .collect();
        let flat = Tensor::cat(
            &scores.iter().map(|s| s.flatten(0, -1)).collect::<Vec<_>>(),
            0,
        );
        let mean = flat.mean(Kind::Double).double_value(&[]);
        let above = flat.gt(mean * 5.0).sum(Kind::Int64).int64_value(&[]);
        ratios.push(above as f64 / flat.numel() as f64 * 100.0);
    }
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
    let scaled: Vec<f64> = ratios.iter().map(|r| (r - lo) / (hi - lo) * 0.16).collect();
    let mean = scaled.iter().sum::<f64>() / layers as f64;
    for (l, x) in scaled.iter().enumerate() {
        let want = 1.0 - (x - mean + 0.3);
        for n in m.model.block_linear_names(l) {
            let q = a.params.iter().find(|q| q.name == n).unwrap();
            assert!(
                (q.asked - want).abs() < 1e-6,
                "{n}: asked {} vs {want}",
                q.asked
            );
            assert!(
                (q.sparsity() - want).abs() < 2e-5,
                "{n}: {} vs {want}",
                q.sparsity()
            );
        }
    }
}

/// A saved allocation replays to the same masks; one made for other parameters is refused.
#[test]
fn an_allocation_replays_bit_for_bit() {
    let m = model();
    let st = stats(&m);
    let vs = m.model.var_store();
    let inputs = || PassInputs {
        stats: Some(&st),
        ..Default::default()
    };
    let mut p = wanda_rows("owl", &[]);
    let mut cfg = PassConfig {
        sparsity: 0.6,
        keep_masks: true,
        ..Default::default()
    };
    let a = p.allocate(vs, &cfg, inputs()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("allocation.json");
    a.save(&path).unwrap();
    cfg.allocation = Some(std::sync::Arc::new(a));
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let before = snapshot(&vars);
    let (_, first) = p.run(vs, &cfg, inputs()).unwrap();
    // Put the weights back and replay from the file with a fresh pruner and no allocator.
    for ((_, t), b) in vars.iter().zip(&before) {
        let _g = tch::no_grad_guard();
        t.shallow_clone().copy_(b);
    }
    let mut fresh = wanda_per_row();
    cfg.allocation = Some(std::sync::Arc::new(Allocation::load(&path).unwrap()));
    let (_, second) = fresh.run(vs, &cfg, inputs()).unwrap();
    for (name, mask) in first.iter() {
        let other = second.get(name).unwrap();
        assert!(
            identical(&mask.keep().unwrap(), &other.keep().unwrap()),
            "{name}"
        );
    }
    // Another filter: the allocation lacks counts for what it now selects.
    let mut a = Allocation::load(&path).unwrap();
    a.params.retain(|q| !q.name.contains("mlp"));
    cfg.allocation = Some(std::sync::Arc::new(a));
    let e = match fresh.run(vs, &cfg, inputs()) {
        Ok(_) => panic!("an allocation without counts for the mlp weights was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("no count for") && e.contains("mlp"), "{e}");
}

/// From the command line: an allocator with a pattern is refused, a pass writes
/// allocation.json, and --allocation replays it to the same weights.
#[test]
fn allocations_are_saved_and_replayed_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let e = fails(
        birdbone()
            .args(["prune", "--dry-run", "--model"])
            .arg(real_model_dir())
            .args([
                "--scorer",
                "wanda",
                "--strategy",
                "nm",
                "--pattern",
                "2:4",
                "--allocator",
                "owl",
            ]),
    );
    assert!(e.contains("N:M pattern"), "{e}");
    let e = fails(
        birdbone()
            .args(["prune", "--dry-run", "--model"])
            .arg(real_model_dir())
            .args(["--allocator", "layerwise"]),
    );
    assert!(e.contains("allocator") && e.contains("owl"), "{e}");
    let run = |out: &std::path::Path, extra: &[&str]| {
        ok(birdbone()
            .args(["prune", "--json", "--model"])
            .arg(real_model_dir())
            .args([
                "--scorer",
                "wanda",
                "--strategy",
                "layerwise",
                "--param",
                "strategy.scope=row",
            ])
            .args([
                "--sparsity",
                "0.6",
                "--calibration-windows",
                "2",
                "--calibration-length",
                "64",
            ])
            .args(["--device", "cpu"])
            .args(extra)
            .arg("--out")
            .arg(out))
    };
    let first = tmp.path().join("owl");
    let (so, se) = run(
        &first,
        &["--allocator", "owl", "--param", "allocator.lambda=0.1"],
    );
    assert!(se.contains("allocation by owl"), "{se}");
    let v: Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["allocation"]["allocator"], "owl");
    let saved = first.join("allocation.json");
    let a = Allocation::load(&saved).unwrap();
    assert_eq!(a.settings["lambda"], "0.1");
    assert_eq!(v["report"]["pruned"].as_u64(), Some(a.pruned));
    let second = tmp.path().join("replay");
    let (_, se) = run(&second, &["--allocation", saved.to_str().unwrap()]);
    assert!(se.contains("replaying the allocation by 'owl'"), "{se}");
    let read =
        |d: &std::path::Path| birdbone_llama::checkpoint::load_dir(d, None, Device::Cpu).unwrap();
    for ((n, x), (_, y)) in read(&first).iter().zip(read(&second).iter()) {
        assert!(identical(x, y), "{n} differs after the replay");
    }
    let e = fails(
        birdbone()
            .args(["prune", "--dry-run", "--model"])
            .arg(real_model_dir())
            .args([
                "--sparsity",
                "0.5",
                "--scorer",
                "wanda",
                "--strategy",
                "layerwise",
                "--allocation",
            ])
            .arg(&saved),
    );
    assert!(e.contains("allocates sparsity 0.6"), "{e}");
}

/// The bird-bone idea on the real model, cheaply (little calibration, 8 evaluation windows):
/// at 70% the birdbone allocation beats the uniform one under the same scorer, strategy and
/// calibration.
#[test]
fn birdbone_beats_uniform_at_70_percent() {
    let tmp = tempfile::tempdir().unwrap();
    let ppl = |allocator: &str| -> f64 {
        let out = tmp.path().join(allocator);
        ok(birdbone()
            .args(["prune", "--quiet", "--model"])
            .arg(real_model_dir())
            .args([
                "--scorer",
                "wanda",
                "--strategy",
                "layerwise",
                "--param",
                "strategy.scope=row",
            ])
            .args(["--allocator", allocator, "--sparsity", "0.7"])
            .args(["--calibration-windows", "8", "--calibration-length", "256"])
            .args(["--device", "cpu", "--out"])
            .arg(&out));
        let (so, _) = ok(birdbone()
            .args([
                "eval",
                "--quiet",
                "--json",
                "--windows",
                "8",
                "--device",
                "cpu",
                "--model",
            ])
            .arg(&out));
        let v: Value = serde_json::from_str(&so).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    let (uniform, bird) = (ppl("uniform"), ppl("birdbone"));
    eprintln!("70%, 8 windows: uniform {uniform:.2}, birdbone {bird:.2}");
    assert!(
        bird < uniform,
        "birdbone {bird} is not below uniform {uniform}"
    );
}

/// On the GPU, a per-row selection at allocated counts (rows taking one more spliced from a
/// second selection) gives the CPU's masks bit for bit, under fused Wanda scores (the path
/// whose rows are otherwise selected by the pruning pass itself).
#[test]
fn cuda_split_rows_select_like_the_cpu() {
    if !cuda_or_skip("cuda_split_rows_select_like_the_cpu") {
        return;
    }
    let m = model();
    let st = stats(&m);
    let names: Vec<String> = (0..3).flat_map(|i| m.model.block_linear_names(i)).collect();
    let weights: BTreeMap<String, Tensor> = m.model.var_store().variables().into_iter().collect();
    let on = |d: Device| -> Vec<(String, Tensor)> {
        names
            .iter()
            .map(|n| (n.clone(), weights[n].to_device(d)))
            .collect()
    };
    let stats_on = |d: Device| {
        let mut s = ActivationStats::new();
        for n in &names {
            let (t, tokens) = st.get(n).unwrap();
            s.insert(n.clone(), t.to_device(d), tokens);
        }
        s
    };
    let cpu_params = on(Device::Cpu);
    let mut p = wanda_rows("uniform", &[]);
    let mut cfg = PassConfig {
        sparsity: 0.6,
        ..Default::default()
    };
    let cpu_stats = stats_on(Device::Cpu);
    let inputs = |s| PassInputs {
        stats: Some(s),
        ..Default::default()
    };
    let a = p.allocate(&cpu_params, &cfg, inputs(&cpu_stats)).unwrap();
    assert!(
        a.params
            .iter()
            .any(|q| q.prune % weights[&q.name].size()[0] as u64 != 0),
        "some matrix splits its count unevenly over its rows"
    );
    cfg.allocation = Some(std::sync::Arc::new(a));
    let (_, cpu) = p.run(&cpu_params, &cfg, inputs(&cpu_stats)).unwrap();
    let gpu_params = on(Device::Cuda(0));
    let gpu_stats = stats_on(Device::Cuda(0));
    let (_, gpu) = p.run(&gpu_params, &cfg, inputs(&gpu_stats)).unwrap();
    for (name, mask) in cpu.iter() {
        let g = gpu
            .get(name)
            .unwrap()
            .keep()
            .unwrap()
            .to_device(Device::Cpu);
        assert!(
            identical(&mask.keep().unwrap(), &g),
            "{name}: GPU masks differ"
        );
    }
    for ((n, c), (_, g)) in cpu_params.iter().zip(&gpu_params) {
        assert!(
            identical(c, &g.to_device(Device::Cpu)),
            "{n}: GPU weights differ"
        );
    }
}

/// An allocation under SparseGPT needs no Hessians (they are for the passes that prune), and its
/// counts reach SparseGPT's column blocks exactly.
#[test]
fn sparsegpt_runs_under_an_allocation() {
    let _g = tch::no_grad_guard();
    let m = model();
    let st = stats(&m);
    let vs = m.model.var_store();
    let mut p = crate::reconstruct::sparsegpt(&[]);
    p.set_allocator(&registry(), "owl", &BTreeMap::new())
        .unwrap();
    let names = m.model.block_linear_names(2);
    let mut cfg = PassConfig {
        sparsity: 0.6,
        filter: birdbone_tch::ParamFilter {
            include: names.clone(),
            exclude: vec![],
        },
        ..Default::default()
    };
    let no_hessians = PassInputs {
        stats: Some(&st),
        ..Default::default()
    };
    let a = p.allocate(vs, &cfg, no_hessians).unwrap();
    assert_eq!(a.params.len(), 7);
    cfg.allocation = Some(std::sync::Arc::new(a.clone()));
    let text = std::fs::read_to_string(real_text("c4.utf8")).unwrap();
    let windows = token_windows(&m.tokenizer, &text, 128, 8).unwrap();
    let (got, _) = calibrate(&m.model, &windows, 4, true, &mut |_| {}).unwrap();
    let with_h = ActivationStats::from_parts(got.sums, got.hessians);
    let (report, masks) = p
        .run(
            vs,
            &cfg,
            PassInputs {
                stats: Some(&with_h),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(report.pruned, a.pruned);
    for q in &a.params {
        assert_eq!(
            masks.get(&q.name).unwrap().pruned().unwrap(),
            q.prune,
            "{}",
            q.name
        );
    }
}
