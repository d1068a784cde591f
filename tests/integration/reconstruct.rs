//! Methods that reconstruct (ABI 1.1): SparseGPT against fasterprune written out with tch, the
//! sequential pass as one transaction, a Hessian that cannot be factored, RIA's formula, the
//! new host operations.

use std::collections::BTreeMap;

use birdbone_llama::{checkpoint, for_each_block_calibrated, token_windows, Loaded};
use birdbone_tch::{undo::inject_commit_failure, ActivationStats, PassConfig, PassInputs, Pruner};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

use serde_json::Value;

use crate::{
    checks::*,
    cli::{birdbone, fails, ok, recipe},
    undo::assert_bitwise,
};

/// IST-DASLab/sparsegpt's `fasterprune`, operation for operation, with the one rule Birdbone
/// states differently: an unstructured block prunes exactly `round(s · n)` (ties by lower flat
/// index, a stable sort) where the published code prunes every score `<=` its `int(s · n)`-th.
/// N:M (`keep` of every `m`): the `m - keep` smallest of each group, ties by lower column.
fn fasterprune(
    w: &Tensor,
    h: &Tensor,
    sparsity: f64,
    nm: Option<(i64, i64)>,
    bs: i64,
) -> (Tensor, Tensor) {
    let w = w.to_kind(Kind::Float).copy();
    let h = h.copy();
    let diag = h.diagonal(0, 0, 1);
    let dead = diag.eq(0.0);
    let _ = diag.shallow_clone().masked_fill_(&dead, 1.0);
    let _ = w.shallow_clone().masked_fill_(&dead.unsqueeze(0), 0.0);
    let damp = 0.01 * diag.mean(Kind::Float).double_value(&[]);
    let _ = diag.shallow_clone().g_add_scalar_(damp);
    let u = h
        .linalg_cholesky(false)
        .cholesky_inverse(false)
        .linalg_cholesky(true);
    let (rows, cols) = (w.size()[0], w.size()[1]);
    let mask = Tensor::zeros([rows, cols], (Kind::Bool, Device::Cpu));
    let mut i1 = 0;
    while i1 < cols {
        let count = bs.min(cols - i1);
        let w1 = w.narrow(1, i1, count).copy();
        let q1 = w1.zeros_like();
        let err1 = w1.zeros_like();
        let hinv1 = u.narrow(0, i1, count).narrow(1, i1, count);
        let d = hinv1.diagonal(0, 0, 1);
        let mask1 = match nm {
            Some(_) => Tensor::zeros([rows, count], (Kind::Bool, Device::Cpu)),
            None => {
                let tmp = w1.square() / d.square().unsqueeze(0);
                let k = (sparsity * (rows * count) as f64).round() as i64;
                let (_, order) = tmp.reshape([-1]).sort_stable(true, 0, false);
                let flat = Tensor::zeros([rows * count], (Kind::Bool, Device::Cpu));
                flat.index_fill(0, &order.narrow(0, 0, k), 1)
                    .view([rows, count])
            }
        };
        for i in 0..count {
            if let Some((keep, m)) = nm {
                if i % m == 0 {
                    let tmp = w1.narrow(1, i, m).square() / d.narrow(0, i, m).square();
                    let (_, order) = tmp.sort_stable(true, 1, false);
                    let _ =
                        mask1
                            .narrow(1, i, m)
                            .scatter_value_(1, &order.narrow(1, 0, m - keep), 1);
                }
            }
            let col = w1.select(1, i);
            let q = col.masked_fill(&mask1.select(1, i), 0.0);
            q1.select(1, i).copy_(&q);
            let e = (&col - &q) / hinv1.double_value(&[i, i]);
            let upd = e
                .unsqueeze(1)
                .matmul(&hinv1.select(0, i).narrow(0, i, count - i).unsqueeze(0));
            let mut rest = w1.narrow(1, i, count - i);
            rest -= upd;
            err1.select(1, i).copy_(&e);
        }
        w.narrow(1, i1, count).copy_(&q1);
        mask.narrow(1, i1, count).copy_(&mask1);
        let i2 = i1 + count;
        if i2 < cols {
            let mut rest = w.narrow(1, i2, cols - i2);
            rest -= err1.matmul(&u.narrow(0, i1, count).narrow(1, i2, cols - i2));
        }
        i1 = i2;
    }
    (w, mask)
}

pub(crate) fn sparsegpt(params: &[(&str, &str)]) -> Pruner {
    Pruner::new(
        &builtin_registry(),
        "magnitude",
        &BTreeMap::new(),
        "sparsegpt",
        &settings(params),
    )
    .unwrap()
}

/// Hessians of real SmolLM2 Linears from calibration-like inputs: random tokens times skewed
/// channel scales, 2,048 of them (more than the widest input, so H is positive definite).
fn hessians_for(params: &[(String, Tensor)]) -> ActivationStats {
    tch::manual_seed(7);
    let mut hs = BTreeMap::new();
    for (g, (n, w)) in params.iter().enumerate() {
        let cols = w.size()[1];
        let scale = Tensor::rand([cols], (Kind::Float, Device::Cpu)).square() * 4.0 + 0.05;
        let x = Tensor::randn([2048, cols], (Kind::Float, Device::Cpu)) * scale.unsqueeze(0);
        hs.insert(n.clone(), (x.transpose(0, 1).matmul(&x), 2048, g as u64));
    }
    ActivationStats::from_parts(BTreeMap::new(), hs)
}

#[test]
fn sparsegpt_matches_fasterprune_written_out_with_tch() {
    let _g = tch::no_grad_guard();
    let all = real_weights(Kind::Float);
    let pick = [
        "model.layers.5.self_attn.q_proj.weight",
        "model.layers.5.mlp.down_proj.weight",
    ];
    let originals: Vec<(String, Tensor)> = all
        .into_iter()
        .filter(|(n, _)| pick.contains(&n.as_str()))
        .collect();
    assert_eq!(originals.len(), 2);
    let stats = hessians_for(&originals);
    for (sparsity, nm, pattern) in [(0.5, None, None), (0.5, Some((2, 4)), Some((2u32, 4u32)))] {
        let params: Vec<(String, Tensor)> = originals
            .iter()
            .map(|(n, w)| (n.clone(), w.copy()))
            .collect();
        let cfg = PassConfig {
            sparsity,
            nm: pattern,
            ..Default::default()
        };
        let inputs = PassInputs {
            stats: Some(&stats),
            ..Default::default()
        };
        let (report, _) = sparsegpt(&[]).run(&params, &cfg, inputs).unwrap();
        assert_eq!(report.pruned * 2, report.total, "exactly half");
        for ((name, got), (_, w)) in params.iter().zip(&originals) {
            let h = &stats.hessian(name).unwrap().matrix;
            let (want, want_mask) = fasterprune(w, h, sparsity, nm, 128);
            let got_mask = got.eq(0.0);
            let agree = got_mask
                .eq_tensor(&want_mask)
                .to_kind(Kind::Float)
                .mean(Kind::Float);
            let agree = agree.double_value(&[]);
            assert!(agree >= 0.999, "{name} {nm:?}: masks agree on {agree}");
            let scale = w.abs().max().double_value(&[]);
            let diff = (got - &want).abs().max().double_value(&[]);
            assert!(
                diff <= 1e-3 * scale,
                "{name} {nm:?}: values differ by {diff} (weights up to {scale})"
            );
            // The kept weights moved: this is reconstruction, not masking.
            let moved = got.ne_tensor(w).logical_and(&got.ne(0.0));
            assert!(moved.sum(Kind::Int64).int64_value(&[]) > 0);
            if let Some((keep, m)) = nm {
                let kept = got
                    .ne(0.0)
                    .view([-1, m])
                    .sum_dim_intlist(1, false, Kind::Int64);
                assert!(
                    kept.le(keep).all().int64_value(&[]) == 1,
                    "{name}: N:M broken"
                );
            } else {
                // Exactly round(s · n) per block of 128 columns.
                let cols = w.size()[1];
                for b in (0..cols).step_by(128) {
                    let n = 128.min(cols - b);
                    let z = got
                        .narrow(1, b, n)
                        .eq(0.0)
                        .sum(Kind::Int64)
                        .int64_value(&[]);
                    assert_eq!(z, w.size()[0] * n / 2, "{name}: block at column {b}");
                }
            }
        }
    }
}

fn model() -> Loaded {
    model_on(Device::Cpu, Kind::Float)
}

pub(crate) fn model_on(device: Device, kind: Kind) -> Loaded {
    Loaded::load(real_model_dir().to_str().unwrap(), device, kind).unwrap()
}

pub(crate) fn calibration(m: &Loaded, count: usize, window: usize) -> Vec<Vec<i64>> {
    let text = std::fs::read_to_string(real_text("c4.utf8")).unwrap();
    token_windows(&m.tokenizer, &text, window, count).unwrap()
}

pub(crate) fn block_weights(m: &Loaded) -> Vec<(String, Tensor)> {
    let names: Vec<String> = (0..m.model.num_blocks())
        .flat_map(|i| m.model.block_linear_names(i))
        .collect();
    m.model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .collect()
}

/// A sequential SparseGPT pass writes block after block (each calibrated on the rewritten ones);
/// a failure in its last block's commit puts every block back, bit for bit.
#[test]
fn sequential_sparsegpt_failing_in_its_last_block_leaves_the_model_bit_identical() {
    let m = model();
    let calib = calibration(&m, 4, 128);
    let weights = block_weights(&m);
    let before = snapshot(&weights);
    let last = m.model.num_blocks() - 1;
    let mut pruner = sparsegpt(&[]);
    let cfg = PassConfig {
        sparsity: 0.5,
        ..Default::default()
    };
    let mut pass = pruner.sequential(&cfg);
    let mut written_before_failure = 0;
    let result = for_each_block_calibrated(&m.model, &calib, 2, true, |i, names, got| {
        let stats = ActivationStats::from_parts(got.sums, got.hessians);
        assert_eq!(stats.len(), 7, "block {i}: statistics for its 7 Linears");
        if i == last {
            // Every earlier block was written: the test can see a rollback.
            written_before_failure = weights
                .iter()
                .zip(&before)
                .filter(|((_, w), b)| !identical(w, b))
                .count();
            inject_commit_failure(Some(4));
        }
        pass.block(m.model.var_store(), names, &stats)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    });
    let err = result
        .expect_err("the last block's commit fails")
        .to_string();
    assert!(err.contains("injected commit failure"), "{err}");
    assert_eq!(written_before_failure, 7 * last);
    drop(pass);
    assert_bitwise(&weights, &before, "after a failed sequential pass");
}

/// Without dampening, a Hessian of fewer tokens than inputs has no Cholesky factor: the pass
/// fails with an error that says so, and nothing is written.
#[test]
fn a_hessian_that_cannot_be_factored_is_a_clean_error() {
    let m = model();
    let calib = calibration(&m, 1, 32);
    let weights = block_weights(&m);
    let before = snapshot(&weights);
    let mut pruner = sparsegpt(&[("percdamp", "0")]);
    let cfg = PassConfig {
        sparsity: 0.5,
        ..Default::default()
    };
    let mut pass = pruner.sequential(&cfg);
    let err = for_each_block_calibrated(&m.model, &calib, 1, true, |_, names, got| {
        let stats = ActivationStats::from_parts(got.sums, got.hessians);
        pass.block(m.model.var_store(), names, &stats)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .expect_err("no factor exists")
    .to_string();
    assert!(err.contains("not positive definite"), "{err}");
    assert!(err.contains("model.layers.0."), "names the weight: {err}");
    drop(pass);
    assert_bitwise(&weights, &before, "after a failed factorisation");
}

/// RIA's score, computed here from its formula, gives the masks the plugin's pass gives.
#[test]
fn ria_prunes_by_its_published_score_per_row_and_two_of_four() {
    let _g = tch::no_grad_guard();
    tch::manual_seed(3);
    let originals: Vec<(String, Tensor)> = real_weights(Kind::Float)
        .into_iter()
        .filter(|(n, _)| n.starts_with("model.layers.7."))
        .collect();
    let sums: BTreeMap<String, (Tensor, u64)> = originals
        .iter()
        .map(|(n, w)| {
            let s = Tensor::rand([w.size()[1]], (Kind::Float, Device::Cpu)).square() * 50.0;
            (n.clone(), (s, 512))
        })
        .collect();
    let stats = ActivationStats::from(
        sums.iter()
            .map(|(n, (t, k))| (n.clone(), (t.shallow_clone(), *k)))
            .collect::<BTreeMap<_, _>>(),
    );
    for (strategy, st, nm) in [
        ("layerwise", vec![("scope", "row")], None),
        ("nm", vec![], Some((2u32, 4u32))),
    ] {
        let params: Vec<(String, Tensor)> = originals
            .iter()
            .map(|(n, w)| (n.clone(), w.copy()))
            .collect();
        let mut pruner = Pruner::new(
            &builtin_registry(),
            "ria",
            &BTreeMap::new(),
            strategy,
            &settings(&st),
        )
        .unwrap();
        let cfg = PassConfig {
            sparsity: 0.5,
            nm,
            ..Default::default()
        };
        let inputs = PassInputs {
            stats: Some(&stats),
            ..Default::default()
        };
        pruner.run(&params, &cfg, inputs).unwrap();
        for ((name, got), (_, w)) in params.iter().zip(&originals) {
            let a = w.abs();
            let score = (&a / a.sum_dim_intlist(0, true, Kind::Float)
                + &a / a.sum_dim_intlist(1, true, Kind::Float))
                * sums[name].0.sqrt().pow_tensor_scalar(0.5).unsqueeze(0);
            let (rows, cols) = (w.size()[0], w.size()[1]);
            let want = match nm {
                None => {
                    let (_, order) = score.sort_stable(true, 1, false);
                    Tensor::zeros([rows, cols], (Kind::Bool, Device::Cpu)).scatter_value(
                        1,
                        &order.narrow(1, 0, cols / 2),
                        1,
                    )
                }
                Some(_) => {
                    let (_, order) = score.view([-1, 4]).sort_stable(true, 1, false);
                    Tensor::zeros([rows * cols / 4, 4], (Kind::Bool, Device::Cpu))
                        .scatter_value(1, &order.narrow(1, 0, 2), 1)
                        .view([rows, cols])
                }
            };
            // Weights already zero stay zero whether or not they were chosen.
            let want = want.logical_or(&w.eq(0.0));
            let differ = got
                .eq(0.0)
                .ne_tensor(&want)
                .sum(Kind::Int64)
                .int64_value(&[]);
            assert_eq!(
                differ, 0,
                "{name} ({strategy}): RIA's mask differs at {differ} weights"
            );
        }
    }
}

/// Quality on the protocol against the reference algorithm written out in PyTorch and
/// transformers (tests/reference/sparsegpt_ria.py, IST-DASLab's `fasterprune` and sequential
/// calibration, with Birdbone's exact count per block): SparseGPT at 50% on SmolLM2-135M,
/// `birdbone prune` then `birdbone eval`, within 1% of the reference's perplexity.
/// (docs/quality.md has every setting; scripts/quality.sh makes them.)
#[test]
fn sparsegpt_perplexity_is_within_one_percent_of_the_reference() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sg24");
    let bin = build_dir().join("birdbone");
    let run = |args: &[&str]| -> String {
        let o = std::process::Command::new(&bin)
            .arg("--quiet")
            .args(args)
            .env("OMP_WAIT_POLICY", "PASSIVE")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "birdbone {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let model = real_model_dir();
    let (model, out_s) = (model.to_str().unwrap(), out.to_str().unwrap());
    run(&[
        "prune",
        "--model",
        model,
        "--strategy",
        "sparsegpt",
        "--sparsity",
        "0.5",
        "--device",
        "cpu",
        "--out",
        out_s,
    ]);
    let ours: serde_json::Value = serde_json::from_str(&run(&[
        "eval", "--json", "--model", out_s, "--device", "cpu",
    ]))
    .unwrap();
    let ours = ours["perplexity"].as_f64().unwrap();

    let text = real_text("wiki.utf8");
    let o = std::process::Command::new(python())
        .arg(workspace_root().join("tests/reference/sparsegpt_ria.py"))
        .args([
            "--model",
            model,
            "--method",
            "sparsegpt",
            "--sparsity",
            "0.5",
        ])
        .arg("--exact-count")
        .arg("--text-dir")
        .arg(text.parent().unwrap())
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let line = String::from_utf8_lossy(&o.stdout);
    let reference: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    let theirs = reference["ppl"].as_f64().unwrap();
    assert!((reference["zero_fraction"].as_f64().unwrap() - 0.5).abs() < 1e-4);
    let gap = (ours - theirs).abs() / theirs;
    eprintln!(
        "SparseGPT 50%: birdbone {ours:.3}, reference {theirs:.3} ({:.2}%)",
        gap * 100.0
    );
    assert!(gap < 0.01, "birdbone {ours} against the reference {theirs}");
    // And ahead of magnitude (240.55) and Wanda (34.35) at 50% (docs/quality.md).
    assert!(ours < 34.35, "{ours}");
}

/// SparseGPT and RIA are reachable from `prune`: the example recipes, and llm-compressor's
/// `SparseGPTModifier` mapped to the `sparsegpt` strategy with sequential calibration.
#[test]
fn sparsegpt_and_ria_through_prune_and_recipes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sg24");
    let (so, se) = ok(birdbone()
        .args(["prune", "--json", "--recipe"])
        .arg(recipe("sparsegpt-2of4.yaml"))
        .arg("--model")
        .arg(real_model_dir())
        .args(["--calibration-windows", "2", "--calibration-length", "128"])
        .args(["--device", "cpu", "--out"])
        .arg(&out));
    assert!(se.contains("sequential: 30 blocks in"), "{se}");
    let v: Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["recipe"]["strategy"]["name"], "sparsegpt");
    let params = v["report"]["params"].as_array().unwrap();
    assert_eq!(params.len(), 210);
    assert!(params
        .iter()
        .all(|p| p["sparsity"].as_f64().unwrap() == 0.5 && p["decision"] == "new values"));
    // The folder holds 2:4 weights, and the kept ones were rewritten (not just masked).
    let written = checkpoint::load_dir(&out, None, Device::Cpu).unwrap();
    let original = checkpoint::load_dir(&real_model_dir(), None, Device::Cpu).unwrap();
    let name = "model.layers.4.mlp.up_proj.weight";
    let find =
        |v: &[(String, Tensor)]| v.iter().find(|(n, _)| n == name).unwrap().1.shallow_clone();
    let (w, w0) = (find(&written), find(&original));
    let kept = w
        .ne(0.0)
        .view([-1, 4])
        .sum_dim_intlist(1, false, Kind::Int64);
    assert_eq!(kept.le(2).all().int64_value(&[]), 1, "2:4");
    let moved = w.ne_tensor(&w0).logical_and(&w.ne(0.0)).sum(Kind::Int64);
    assert!(
        moved.int64_value(&[]) > w.numel() as i64 / 4,
        "kept weights were updated"
    );

    let lc = tmp.path().join("sparsegpt-lc.yaml");
    std::fs::write(
        &lc,
        "oneshot_stage:\n  pruning_modifiers:\n    SparseGPTModifier:\n      sparsity: 0.5\n      mask_structure: \"2:4\"\n      block_size: 64\n      dampening_frac: 0.02\n      targets: [Linear]\n      ignore: [lm_head]\n",
    )
    .unwrap();
    let (so, _) = ok(birdbone()
        .args(["prune", "--dry-run", "--json", "--recipe"])
        .arg(&lc)
        .arg("--model")
        .arg(real_model_dir()));
    let v: Value = serde_json::from_str(&so).unwrap();
    let r = &v["recipe"];
    assert_eq!(r["strategy"]["name"], "sparsegpt", "{r}");
    assert_eq!(r["strategy"]["params"]["blocksize"], 64);
    assert_eq!(r["strategy"]["params"]["percdamp"], 0.02);
    assert_eq!(r["pattern"], "2:4");
    assert_eq!(r["calibration"]["mode"], "sequential");

    let (so, _) = ok(birdbone()
        .args(["prune", "--dry-run", "--json", "--recipe"])
        .arg(recipe("ria-50.yaml"))
        .arg("--model")
        .arg(real_model_dir()));
    let v: Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["recipe"]["scorer"]["name"], "ria");

    // A strategy that needs no calibration refuses one; sparsegpt with global-like misuse is
    // named.
    let se = fails(
        birdbone()
            .args([
                "prune",
                "--dry-run",
                "--strategy",
                "sparsegpt",
                "--param",
                "strategy.blocksize=0",
            ])
            .arg("--model")
            .arg(real_model_dir()),
    );
    assert!(se.contains("blocksize must be 1 to 256"), "{se}");
}
