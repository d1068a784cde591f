//! Compression during fine-tuning: the training callback with real optimizers.

use birdbone_llama::{lm_loss, token_windows, Loaded};
use birdbone_tch::train::{
    Compression, CompressionConfig, Curve, GrowthPlateConfig, RegrowConfig, Schedule,
};
use birdbone_tch::{selected, ParamFilter, PluginRegistry, Pruner};
use birdbone_tests::*;
use tch::{
    nn::{self, OptimizerConfig},
    Device, Kind, Tensor,
};

use crate::checks::*;

fn zeros_in(params: &[(String, Tensor)]) -> i64 {
    params
        .iter()
        .map(|(_, t)| t.eq(0.0).sum(Kind::Int64).int64_value(&[]))
        .sum()
}

fn layerwise_count(params: &[(String, Tensor)], sparsity: f64) -> u64 {
    params
        .iter()
        .map(|(_, t)| (sparsity * t.numel() as f64).round() as u64)
        .sum()
}

fn gradual(start: u64, end: u64, every: u64, s0: f64, s1: f64, curve: Curve) -> Schedule {
    Schedule::Gradual {
        start_step: start,
        end_step: end,
        every,
        initial_sparsity: s0,
        final_sparsity: s1,
        curve,
    }
}

fn config(schedule: Schedule) -> CompressionConfig {
    CompressionConfig {
        schedule,
        filter: ParamFilter::default(),
        nm: None,
        growth_plates: None,
        regrow: None,
        layer_plates: None,
    }
}

#[test]
fn schedules_give_their_sparsity_at_each_point_and_only_there() {
    let cubic = gradual(10, 50, 10, 0.1, 0.5, Curve::Cubic);
    cubic.validate().unwrap();
    let expected = [
        (10, 0.1),
        (20, 0.5 - 0.4 * 0.75f64.powi(3)),
        (30, 0.5 - 0.4 * 0.125),
        (40, 0.5 - 0.4 * 0.25f64.powi(3)),
        (50, 0.5),
    ];
    for step in 0..70 {
        let want = expected.iter().find(|(s, _)| *s == step).map(|(_, v)| *v);
        let got = cubic.target_at(step);
        match (want, got) {
            (Some(w), Some(g)) => assert!((w - g).abs() < 1e-12, "step {step}: {g} != {w}"),
            (None, None) => {}
            _ => panic!("step {step}: expected {want:?}, got {got:?}"),
        }
    }
    // Cubic prunes fast early, then slowly: above the straight line between the points.
    let linear = gradual(10, 50, 10, 0.1, 0.5, Curve::Linear);
    assert!((linear.target_at(30).unwrap() - 0.3).abs() < 1e-12);
    assert!(cubic.target_at(20).unwrap() > linear.target_at(20).unwrap());
    let once = Schedule::OneShot {
        at_step: 3,
        sparsity: 0.5,
    };
    assert_eq!(once.target_at(3), Some(0.5));
    assert_eq!(once.target_at(4), None);

    // Bad schedules are refused with a reason, from code and from a config file.
    assert!(gradual(10, 45, 10, 0.1, 0.5, Curve::Cubic)
        .validate()
        .unwrap_err()
        .to_string()
        .contains("multiple"));
    assert!(gradual(0, 10, 1, 0.1, 1.5, Curve::Cubic)
        .validate()
        .is_err());
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        r#"{"scorer": "magnitude", "sparsity": 0.5, "training": {
            "schedule": {"kind": "gradual", "start_step": 0, "end_step": 100, "every": 10,
            "initial_sparsity": 0.0, "final_sparsity": 0.5, "curve": "linear"},
            "growth_plates": {"factor": 2.0}, "regrow": {"fraction": 0.1}}}"#,
    )
    .unwrap();
    let c = CompressionConfig::from_file(&good).unwrap();
    assert_eq!(c.schedule.target_at(50), Some(0.25));
    let plates = c.growth_plates.unwrap();
    assert_eq!(plates.factor, 2.0);
    assert_eq!(plates.rate, GrowthPlateConfig::default().rate);
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"training": {"schedule": {"kind": "sometimes"}}}"#).unwrap();
    let e = CompressionConfig::from_file(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("sometimes"), "{e}");
}

/// The real model, AdamW, a gradual schedule: after every optimizer step the selected weights
/// hold exactly the scheduled number of zeros, although Adam's moments move pruned weights.
#[test]
fn real_model_keeps_exact_sparsity_after_every_adamw_step() {
    tch::manual_seed(0);
    let m = Loaded::load(real_model_dir().to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let text = std::fs::read_to_string(real_text("wiki.utf8")).unwrap();
    let windows = token_windows(&m.tokenizer, &text, 24, 8).unwrap();
    let vs = m.model.var_store();
    let params = selected(vs, &ParamFilter::default()).unwrap();
    let mut opt = nn::AdamW::default().build(vs, 3e-4).unwrap();
    let reg = builtin_registry();
    let pruner = Pruner::new(
        &reg,
        "magnitude",
        &settings(&[]),
        "layerwise",
        &settings(&[]),
    )
    .unwrap();
    let schedule = gradual(2, 6, 2, 0.2, 0.5, Curve::Cubic);
    let mut comp = Compression::new(pruner, config(schedule.clone())).unwrap();
    let mut current = 0u64;
    let mut regrew_somewhere = false;
    for step in 1..=7u64 {
        let ids = Tensor::from_slice(&windows[step as usize % windows.len()]).view([1, -1]);
        opt.zero_grad();
        let loss = lm_loss(&m.model, &ids).unwrap();
        assert!(loss.double_value(&[]).is_finite());
        loss.backward();
        comp.after_backward(vs).unwrap();
        opt.step();
        if current > 0 && zeros_in(&params) < current as i64 {
            regrew_somewhere = true;
        }
        let event = comp.after_step(vs).unwrap();
        assert_eq!(event.step, step);
        if let Some(target) = schedule.target_at(step) {
            current = layerwise_count(&params, target);
            let pass = event.pass.as_ref().expect("a pass at a schedule point");
            assert_eq!(pass.pruned, current, "step {step}");
        } else {
            assert!(event.pass.is_none());
        }
        let (pruned, total) = comp.masks().counts().unwrap();
        assert_eq!(pruned, current, "step {step}");
        assert_eq!(
            event.sparsity,
            current as f64 / total.max(1) as f64,
            "step {step}"
        );
        assert_eq!(zeros_in(&params), current as i64, "step {step}");
    }
    assert_eq!(current, layerwise_count(&params, 0.5));
    assert!(
        regrew_somewhere,
        "AdamW never moved a pruned weight: the re-application was not tested"
    );
}

/// Two fast-growing rows are protected at the pass, the total is still exact, and once they
/// settle they ossify and lose protection.
#[test]
fn growth_plates_protect_growing_rows_and_keep_the_total_exact() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().randn("w", &[16, 32], 0.0, 1.0);
    let target = Tensor::randn([16, 32], (Kind::Float, Device::Cpu)) * 3.0;
    let growing = [3i64, 11];
    let mut opt = nn::Sgd::default().build(&vs, 0.01).unwrap();
    let reg = builtin_registry();
    let pruner = Pruner::new(&reg, "magnitude", &settings(&[]), "global", &settings(&[])).unwrap();
    let mut cfg = config(gradual(6, 36, 30, 0.3, 0.5, Curve::Cubic));
    cfg.filter = ParamFilter {
        include: vec!["w".into()],
        exclude: vec![],
    };
    cfg.growth_plates = Some(GrowthPlateConfig {
        rate: 0.3,
        factor: 1.5,
        max_protected: 0.125,
        warmup_steps: 3,
    });
    let mut comp = Compression::new(pruner, cfg).unwrap();
    for step in 1..=36u64 {
        // Rows 3 and 11 are pulled hard towards their targets for the first six steps, then
        // let go; the other rows drift slowly all along.
        let pull = Tensor::ones([16, 1], (Kind::Float, Device::Cpu));
        for r in growing {
            let _ = pull.get(r).fill_(if step <= 6 { 40.0 } else { 0.0 });
        }
        opt.zero_grad();
        let loss = ((&w - &target).square() * &pull).sum(Kind::Float);
        loss.backward();
        comp.after_backward(&vs).unwrap();
        opt.step();
        let event = comp.after_step(&vs).unwrap();
        if step == 6 {
            assert_eq!(event.protected_rows, 2);
            let rows = comp
                .last_protected()
                .get("w")
                .expect("w has protected rows");
            let want = Tensor::zeros([16], (Kind::Bool, Device::Cpu));
            for r in growing {
                let _ = want.get(r).fill_(1);
            }
            assert!(identical(rows, &want), "protected {rows:?}");
            // Nothing pruned in the protected rows; the budget was met exactly elsewhere.
            let keep = comp.masks().get("w").unwrap().keep().unwrap();
            for r in growing {
                assert_eq!(keep.get(r).all().int64_value(&[]), 1, "row {r} was pruned");
                assert_eq!(w.get(r).eq(0.0).sum(Kind::Int64).int64_value(&[]), 0);
            }
            assert_eq!(event.pass.as_ref().unwrap().pruned, 154); // round(0.3 × 512)
            assert_eq!(zeros_in(&[("w".into(), w.shallow_clone())]), 154);
        }
        if step == 36 {
            assert_eq!(event.pass.as_ref().unwrap().pruned, 256);
            assert_eq!(event.protected_rows, 0, "settled rows stay protected");
            assert!(comp.growth_plates().unwrap().ossified_rows().unwrap() >= 2);
        }
    }
}

#[test]
fn regrowth_swaps_weights_and_keeps_the_count_exact() {
    tch::manual_seed(2);
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().randn("w", &[64, 48], 0.0, 1.0);
    let x = Tensor::randn([256, 48], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([256, 64], (Kind::Float, Device::Cpu));
    let mut opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();
    let reg = builtin_registry();
    let pruner = Pruner::new(
        &reg,
        "magnitude",
        &settings(&[]),
        "layerwise",
        &settings(&[]),
    )
    .unwrap();
    let mut cfg = config(gradual(2, 4, 2, 0.5, 0.5, Curve::Linear));
    cfg.filter.include = vec!["w".into()];
    cfg.regrow = Some(RegrowConfig { fraction: 0.1 });
    let mut comp = Compression::new(pruner, cfg).unwrap();
    let mut masks_after_first = None;
    for step in 1..=5u64 {
        opt.zero_grad();
        x.matmul(&w.tr())
            .mse_loss(&y, tch::Reduction::Mean)
            .backward();
        comp.after_backward(&vs).unwrap();
        opt.step();
        let event = comp.after_step(&vs).unwrap();
        // round(0.5 × 3072) pruned; a tenth of them swapped at each point.
        assert_eq!(
            comp.masks().counts().unwrap().0,
            if step >= 2 { 1536 } else { 0 }
        );
        if event.pass.is_some() {
            assert_eq!(event.regrown, 154);
        }
        if step == 2 {
            masks_after_first = Some(comp.masks().get("w").unwrap().keep().unwrap());
        }
        if step == 4 {
            // The regrown weights came back at zero and move from the next step on.
            assert_eq!(zeros_in(&[("w".into(), w.shallow_clone())]), 1536 + 154);
        }
        if step == 5 {
            assert_eq!(zeros_in(&[("w".into(), w.shallow_clone())]), 1536);
        }
    }
    let first = masks_after_first.unwrap();
    let last = comp.masks().get("w").unwrap().keep().unwrap();
    let changed = first.ne_tensor(&last).sum(Kind::Int64).int64_value(&[]);
    assert!(changed > 0, "regrowth changed nothing");
}

/// A plugin that panics in the second pass of a schedule: the step returns the error, and the
/// weights and the optimizer's state are exactly those of a twin run whose schedule had no second
/// pass.
#[test]
fn a_plugin_error_during_a_step_leaves_weights_and_optimizer_state_unchanged() {
    let mut reg = PluginRegistry::new();
    let s = reg.load_paths(&[
        plugin_file("birdbone_fixture_plugin_panics"),
        plugin_file("birdbone_plugin_magnitude"),
        plugin_file("birdbone_plugin_layerwise"),
    ]);
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    let twin = |scorer: &str, scorer_settings: &[(&str, &str)], schedule: Schedule| {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let net = nn::seq()
            .add(nn::linear(&root / "fc1", 32, 64, Default::default()))
            .add_fn(|x| x.gelu("none"))
            .add(nn::linear(&root / "fc2", 64, 8, Default::default()));
        let opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();
        let pruner = Pruner::new(
            &reg,
            scorer,
            &settings(scorer_settings),
            "layerwise",
            &settings(&[]),
        )
        .unwrap();
        let comp = Compression::new(pruner, config(schedule)).unwrap();
        (vs, net, opt, comp)
    };
    // Two Linear weights, each scored once in a pass (the host keeps fused scores from
    // selection to apply): the late scorer succeeds for the first pass's two calls only.
    let (vs_a, net_a, mut opt_a, mut comp_a) = twin(
        "panics-later",
        &[("calls", "2")],
        gradual(2, 4, 2, 0.25, 0.5, Curve::Cubic),
    );
    let (mut vs_b, net_b, mut opt_b, mut comp_b) = twin(
        "magnitude",
        &[],
        Schedule::OneShot {
            at_step: 2,
            sparsity: 0.25,
        },
    );
    // The same start for both (other tests draw from the global generator concurrently).
    vs_b.copy(&vs_a).unwrap();
    let x = Tensor::randn([64, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([64, 8], (Kind::Float, Device::Cpu));
    use tch::nn::Module;
    let same = |a: &nn::VarStore, b: &nn::VarStore| {
        let (a, b) = (a.variables(), b.variables());
        assert_eq!(a.len(), b.len());
        for (name, t) in &a {
            assert!(
                identical(t, &b[name]),
                "{name} differs from the twin: {}",
                (t - &b[name]).abs().max().double_value(&[])
            );
        }
    };
    for step in 1..=6u64 {
        let mut results = Vec::new();
        for (vs, net, opt, comp) in [
            (&vs_a, &net_a, &mut opt_a, &mut comp_a),
            (&vs_b, &net_b, &mut opt_b, &mut comp_b),
        ] {
            opt.zero_grad();
            net.forward(&x)
                .mse_loss(&y, tch::Reduction::Mean)
                .backward();
            comp.after_backward(vs).unwrap();
            opt.step();
            results.push(comp.after_step(vs));
        }
        let b = results.pop().unwrap().unwrap();
        let a = results.pop().unwrap();
        if step == 4 {
            let e = a.expect_err("the second pass must fail").to_string();
            assert!(e.contains("late scorer bug"), "{e}");
        } else {
            let a = a.unwrap();
            assert_eq!(a.sparsity, b.sparsity);
        }
        // Weights identical after every step, including the failed one, and after the steps
        // that follow it: the optimizer's moments were not touched either.

        same(&vs_a, &vs_b);
        assert_eq!(
            comp_a.masks().counts().unwrap(),
            comp_b.masks().counts().unwrap()
        );
    }
}
