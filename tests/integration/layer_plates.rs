//! Growth plates over layers: every parameter rises to its own allocated sparsity, the least
//! load-bearing first, ossifies there, and every pass prunes exact counts.

use std::collections::BTreeMap;

use birdbone_host::Allocation;
use birdbone_llama::{lm_loss_with, token_windows, Loaded, StatsRecorder};
use birdbone_tch::train::{Compression, CompressionConfig, Curve, LayerPlateConfig, Schedule};
use birdbone_tch::{selected, ParamFilter, Pruner};
use birdbone_tests::*;
use tch::{
    nn::{self, OptimizerConfig},
    Device, Kind, Tensor,
};

use crate::checks::*;

fn zeros(t: &Tensor) -> u64 {
    t.eq(0.0).sum(Kind::Int64).int64_value(&[]) as u64
}

/// What a parameter of final sparsity `a` (in an allocation spanning `lo..hi`) prunes at
/// progress `x` of a cubic schedule from 0, written out independently of the callback.
fn expected(final_prune: u64, numel: u64, x: f64, lo: f64, hi: f64, earliest: f64) -> u64 {
    let a = final_prune as f64 / numel as f64;
    let end = earliest + (1.0 - earliest) * (hi - a) / (hi - lo);
    let q = (x / end).min(1.0);
    if q >= 1.0 {
        return final_prune;
    }
    let share = 1.0 - (1.0 - q).powi(3);
    ((a * share * numel as f64).round() as u64).min(final_prune)
}

/// Four matrices with an uneven allocation, trained with SGD towards a moving target: at every
/// pass each matrix prunes exactly its scheduled count (the total exact), the most pruned
/// matrix finishes and ossifies first, an ossified matrix's mask never changes again, and the
/// last pass lands on the allocation's counts.
#[test]
fn layer_plates_keep_exact_counts_and_ossify_the_least_load_bearing_first() {
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let shapes: [(&str, [i64; 2]); 4] = [
        ("a", [16, 32]),
        ("b", [8, 32]),
        ("c", [16, 16]),
        ("d", [32, 16]),
    ];
    let ws: Vec<(String, Tensor)> = shapes
        .iter()
        .map(|(n, s)| (n.to_string(), vs.root().randn(n, s, 0.0, 1.0)))
        .collect();
    let targets: Vec<Tensor> = ws
        .iter()
        .map(|(_, w)| Tensor::randn(w.size(), (Kind::Float, Device::Cpu)))
        .collect();
    let sizes: Vec<(String, u64)> = ws
        .iter()
        .map(|(n, w)| (n.clone(), w.numel() as u64))
        .collect();
    let allocation = Allocation::exact(
        "test",
        &BTreeMap::new(),
        0.5,
        &sizes,
        &[0.3, 0.45, 0.6, 0.7],
    )
    .unwrap();
    let n: u64 = sizes.iter().map(|(_, k)| k).sum();
    assert_eq!(allocation.pruned, (0.5 * n as f64).round() as u64);
    let (lo, hi) = allocation.params.iter().fold((1f64, 0f64), |(l, h), p| {
        (l.min(p.sparsity()), h.max(p.sparsity()))
    });

    let reg = builtin_registry();
    let pruner = Pruner::new(
        &reg,
        "magnitude",
        &settings(&[]),
        "layerwise",
        &settings(&[]),
    )
    .unwrap();
    let schedule = Schedule::Gradual {
        start_step: 2,
        end_step: 12,
        every: 2,
        initial_sparsity: 0.0,
        final_sparsity: 0.5,
        curve: Curve::Cubic,
    };
    let earliest = 0.4;
    let cfg = |schedule: Schedule| CompressionConfig {
        schedule,
        filter: ParamFilter {
            include: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            exclude: vec![],
        },
        nm: None,
        growth_plates: None,
        regrow: None,
        layer_plates: Some(LayerPlateConfig { earliest }),
    };
    let mut comp = Compression::new(pruner, cfg(schedule.clone())).unwrap();
    comp.set_allocation(allocation.clone()).unwrap();
    let mut opt = nn::Sgd::default().build(&vs, 0.05).unwrap();
    let mut frozen: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut order = Vec::new();
    for step in 1..=14u64 {
        opt.zero_grad();
        let loss = ws
            .iter()
            .zip(&targets)
            .map(|((_, w), t)| (w - t).square().sum(Kind::Float))
            .fold(Tensor::from(0f32), |a, b| a + b);
        loss.backward();
        comp.after_backward(&vs).unwrap();
        opt.step();
        let event = comp.after_step(&vs).unwrap();
        let Some(x) = schedule.progress_at(step) else {
            assert!(event.pass.is_none(), "step {step}");
            continue;
        };
        let mut total = 0;
        for (p, (name, w)) in allocation.params.iter().zip(&ws) {
            let want = expected(p.prune, p.numel, x, lo, hi, earliest);
            assert_eq!(zeros(w), want, "step {step}, {name}");
            assert_eq!(
                comp.masks().get(name).unwrap().pruned().unwrap(),
                want,
                "step {step}, {name}'s mask"
            );
            total += want;
            let keep = comp.masks().get(name).unwrap().keep().unwrap();
            match frozen.get(name) {
                Some(before) => assert!(
                    identical(before, &keep),
                    "step {step}: ossified {name} changed"
                ),
                None if want == p.prune && comp.layer_plates().unwrap().is_ossified(name) => {
                    frozen.insert(name.clone(), keep);
                    order.push(name.clone());
                }
                None => assert!(!comp.layer_plates().unwrap().is_ossified(name)),
            }
        }
        assert_eq!(comp.masks().counts().unwrap(), (total, n), "step {step}");
        assert_eq!(event.sparsity, total as f64 / n as f64, "step {step}");
    }
    // The most pruned (d, 70%) ossified first, the least pruned (a, 30%) only at the end; all did.
    assert_eq!(order.first().map(String::as_str), Some("d"), "{order:?}");
    assert_eq!(order.last().map(String::as_str), Some("a"), "{order:?}");
    assert_eq!(order.len(), 4);
    let done: u64 = ws.iter().map(|(_, w)| zeros(w)).sum();
    assert_eq!(done, allocation.pruned);

    // An allocation for another sparsity than the schedule's end is refused at the first pass,
    // with the model untouched.
    let pruner = Pruner::new(
        &reg,
        "magnitude",
        &settings(&[]),
        "layerwise",
        &settings(&[]),
    )
    .unwrap();
    let one_shot = Schedule::OneShot {
        at_step: 1,
        sparsity: 0.6,
    };
    let mut other = Compression::new(pruner, cfg(one_shot)).unwrap();
    other.set_allocation(allocation).unwrap();
    let before: Vec<Tensor> = ws.iter().map(|(_, w)| w.copy()).collect();
    let e = other.after_step(&vs).unwrap_err().to_string();
    assert!(e.contains("0.5") && e.contains("0.6"), "{e}");
    for ((_, w), b) in ws.iter().zip(&before) {
        assert!(identical(w, b));
    }
}

/// The real model with Wanda scored on the training forwards' own activations: each pass
/// needs them (none recorded: a clear error, nothing pruned), and with them the layer plates
/// prune exact uniform counts when no allocation is given, ossifying everything at the end.
#[test]
fn wanda_plates_score_with_the_training_forwards_activations() {
    tch::manual_seed(0);
    let m = Loaded::load(real_model_dir().to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let text = std::fs::read_to_string(real_text("wiki.utf8")).unwrap();
    let windows = token_windows(&m.tokenizer, &text, 24, 4).unwrap();
    let vs = m.model.var_store();
    let params = selected(vs, &ParamFilter::default()).unwrap();
    let n: u64 = params.iter().map(|(_, t)| t.numel() as u64).sum();
    let reg = builtin_registry();
    let wanda = || {
        Pruner::new(
            &reg,
            "wanda",
            &settings(&[]),
            "layerwise",
            &settings(&[("scope", "row")]),
        )
        .unwrap()
    };
    let schedule = Schedule::Gradual {
        start_step: 1,
        end_step: 3,
        every: 1,
        initial_sparsity: 0.0,
        final_sparsity: 0.5,
        curve: Curve::Cubic,
    };
    let cfg = CompressionConfig {
        schedule: schedule.clone(),
        filter: ParamFilter::default(),
        nm: None,
        growth_plates: None,
        regrow: None,
        layer_plates: Some(LayerPlateConfig::default()),
    };
    let mut opt = nn::AdamW::default().build(vs, 1e-4).unwrap();

    // Without activations the pass fails and prunes nothing (the checkpoint, dequantized from
    // GGUF, has exact zeros of its own).
    let natural: u64 = params.iter().map(|(_, t)| zeros(t)).sum();
    let mut bare = Compression::new(wanda(), cfg.clone()).unwrap();
    assert!(bare.wants_activations());
    let e = bare.after_step(vs).unwrap_err().to_string();
    assert!(e.to_lowercase().contains("activation"), "{e}");
    assert_eq!(params.iter().map(|(_, t)| zeros(t)).sum::<u64>(), natural);

    let mut comp = Compression::new(wanda(), cfg).unwrap();
    for step in 1..=4u64 {
        let ids = Tensor::from_slice(&windows[step as usize % windows.len()]).view([1, -1]);
        opt.zero_grad();
        let mut rec = comp.wants_activations().then(StatsRecorder::new);
        let loss = lm_loss_with(&m.model, &ids, rec.as_mut()).unwrap();
        loss.backward();
        if let Some(r) = rec {
            comp.observe_activations(&r.into_sums()).unwrap();
        }
        comp.after_backward(vs).unwrap();
        opt.step();
        let event = comp.after_step(vs).unwrap();
        assert_eq!(comp.wants_activations(), step < 3, "step {step}");
        // Every weight the masks prune is zero after the step.
        let (pruned, total) = comp.masks().counts().unwrap();
        assert_eq!(total, n, "step {step}");
        for (name, w) in &params {
            if let Some(mask) = comp.masks().get(name) {
                let off = w.masked_select(&mask.keep().unwrap().logical_not());
                assert_eq!(off.ne(0.0).sum(Kind::Int64).int64_value(&[]), 0, "{name}");
            }
        }
        if let Some(target) = schedule.target_at(step) {
            assert!(event.pass.is_some());
            // Uniform plates: every matrix at round(s·n) of its own, within one weight each of
            // the schedule's target, and exactly round(0.5·N) at the end.
            let want = (target * n as f64).round();
            assert!(
                (pruned as f64 - want).abs() <= params.len() as f64,
                "step {step}: {pruned} against {want}"
            );
        }
        let ossified = comp.layer_plates().unwrap().ossified().len();
        assert_eq!(
            ossified,
            if step >= 3 { params.len() } else { 0 },
            "step {step}"
        );
    }
    let (pruned, _) = comp.masks().counts().unwrap();
    assert_eq!(pruned, (0.5 * n as f64).round() as u64);
}
