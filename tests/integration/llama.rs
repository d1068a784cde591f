use birdbone_llama::{
    collect_stats, for_each_block_sequential, generate_greedy, perplexity, token_windows, Loaded,
};
use birdbone_tch::{ActivationStats, MaskSet, PassConfig, PassInputs, Pruner};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

use crate::checks::*;

fn model() -> Loaded {
    Loaded::load(real_model_dir().to_str().unwrap(), Device::Cpu, Kind::Float).unwrap()
}

fn windows(m: &Loaded, file: &str, window: usize, count: usize) -> Vec<Vec<i64>> {
    let text = std::fs::read_to_string(real_text(file)).unwrap();
    token_windows(&m.tokenizer, &text, window, count).unwrap()
}

#[test]
fn greedy_generation_continues_sensibly() {
    let m = model();
    let out = generate_greedy(&m, "The capital of France is", 12).unwrap();
    assert!(out.contains("Paris"), "continuation: {out:?}");
}

#[test]
fn logits_match_transformers_within_f32_rounding() {
    let m = model();
    let ids = m
        .encode("Birdbone prunes a live model in place, one layer at a time.")
        .unwrap();
    let script = workspace_root().join("scripts/reference_logits.py");
    let out = std::process::Command::new(python())
        .arg(&script)
        .arg(real_model_dir())
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reference: Vec<Vec<f64>> = serde_json::from_value(v["logits"].clone()).unwrap();
    let ours = tch::no_grad(|| {
        m.model
            .forward(&Tensor::from_slice(&ids).unsqueeze(0), None, None)
    })
    .unwrap();
    let n = ids.len() as i64;
    let mut worst = 0f64;
    for (row, r) in reference.iter().enumerate() {
        let pos = n - reference.len() as i64 + row as i64;
        let mine = Vec::<f64>::try_from(&ours.get(0).get(pos).to_kind(Kind::Double)).unwrap();
        for (a, b) in mine.iter().zip(r) {
            worst = worst.max((a - b).abs());
        }
        let argmax = |x: &[f64]| {
            x.iter()
                .enumerate()
                .max_by(|a, b| a.1.partial_cmp(b.1).unwrap())
                .unwrap()
                .0
        };
        assert_eq!(
            argmax(&mine),
            argmax(r),
            "position {pos}: different top token"
        );
    }
    // Logits are O(10); f32 accumulation-order differences stay far below this.
    assert!(worst < 2e-3, "largest logit difference {worst}");
    eprintln!("largest logit difference against transformers: {worst:.2e}");
}

#[test]
fn dense_perplexity_is_plausible() {
    let m = model();
    let w = windows(&m, "wiki.utf8", 512, 4);
    let p = perplexity(&m.model, &w, 2).unwrap();
    assert_eq!(p.tokens, 4 * 511);
    assert!(
        p.ppl.is_finite() && p.ppl > 5.0 && p.ppl < 40.0,
        "perplexity {}",
        p.ppl
    );
}

/// Perplexity after a pass of `scorer` + `strategy` at 50%, calibrated on C4 (short, for CI).
fn pruned_perplexity(
    scorer: &str,
    strategy: &str,
    st: &[(&str, &str)],
    nm: Option<(u32, u32)>,
) -> f64 {
    let m = model();
    let calib = windows(&m, "c4.utf8", 512, 4);
    let eval = windows(&m, "wiki.utf8", 512, 4);
    let stats = ActivationStats::from(collect_stats(&m.model, &calib, 2).unwrap().0);
    let reg = builtin_registry();
    let mut pruner = Pruner::new(&reg, scorer, &settings(&[]), strategy, &settings(st)).unwrap();
    let cfg = PassConfig {
        sparsity: 0.5,
        nm,
        ..Default::default()
    };
    let (report, _) = pruner
        .run(
            m.model.var_store(),
            &cfg,
            PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(report.pruned * 2, report.total);
    perplexity(&m.model, &eval, 2).unwrap().ppl
}

#[test]
fn wanda_raises_perplexity_less_than_magnitude_at_half_sparsity() {
    let dense = {
        let m = model();
        perplexity(&m.model, &windows(&m, "wiki.utf8", 512, 4), 2)
            .unwrap()
            .ppl
    };
    let magnitude = pruned_perplexity("magnitude", "layerwise", &[], None);
    let wanda = pruned_perplexity("wanda", "layerwise", &[("scope", "row")], None);
    eprintln!("perplexity: dense {dense:.2}, magnitude 50% {magnitude:.2}, wanda 50% {wanda:.2}");
    assert!(
        magnitude > dense && wanda > dense,
        "pruning did not hurt at all?"
    );
    assert!(
        wanda < magnitude,
        "wanda {wanda} should beat magnitude {magnitude}"
    );
}

#[test]
fn wanda_beats_magnitude_at_two_four() {
    let magnitude = pruned_perplexity("magnitude", "nm", &[], Some((2, 4)));
    let wanda = pruned_perplexity("wanda", "nm", &[], Some((2, 4)));
    eprintln!("perplexity at 2:4: magnitude {magnitude:.2}, wanda {wanda:.2}");
    assert!(
        wanda < magnitude,
        "wanda {wanda} should beat magnitude {magnitude} at 2:4"
    );
}

#[test]
fn sequential_statistics_differ_from_one_pass_and_both_prune_exactly() {
    let m = model();
    let calib = windows(&m, "c4.utf8", 256, 4);
    let (one_pass, _) = collect_stats(&m.model, &calib, 2).unwrap();
    let reg = builtin_registry();
    let mut pruner = Pruner::new(
        &reg,
        "wanda",
        &settings(&[]),
        "layerwise",
        &settings(&[("scope", "row")]),
    )
    .unwrap();
    let cfg = PassConfig {
        sparsity: 0.5,
        ..Default::default()
    };
    let (mut reports, mut masks) = (Vec::new(), MaskSet::new());
    let cal = for_each_block_sequential(&m.model, &calib, 2, |_, names, sums| {
        let stats = ActivationStats::from(sums);
        if let Some((r, mk)) = pruner.run_block(m.model.var_store(), names, &stats, &cfg)? {
            reports.push(r);
            masks.extend(mk);
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .unwrap();
    assert_eq!(reports.len(), m.model.num_blocks());
    assert_eq!(cal.tokens, 4 * 256);
    for r in &reports {
        assert_eq!(r.pruned * 2, r.total, "every block exactly 50%");
    }
    let (pruned, total) = masks.counts().unwrap();
    assert_eq!(pruned * 2, total);
    // Block 0 sees the same inputs either way; later blocks see the pruned blocks' outputs.
    let sequential_stats = {
        // Re-run one pass on the now-pruned model: its statistics are what the sequential pass saw.
        let (s, _) = collect_stats(&m.model, &calib, 2).unwrap();
        s
    };
    let name0 = "model.layers.0.self_attn.q_proj.weight";
    let name5 = "model.layers.5.mlp.down_proj.weight";
    let diff = |n: &str| {
        (&one_pass[n].0 - &sequential_stats[n].0)
            .abs()
            .max()
            .double_value(&[])
    };
    assert_eq!(
        diff(name0),
        0.0,
        "block 0's inputs do not depend on pruning"
    );
    assert!(
        diff(name5) > 0.0,
        "block 5's inputs must reflect the pruned blocks before it"
    );
}
