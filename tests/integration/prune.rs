use birdbone_host_api::ErrorCode;
use birdbone_tch::{Error, HostError, ParamFilter, PassConfig, Pruner};
use birdbone_tests::*;
use tch::{Kind, Tensor};

use crate::checks::*;

#[test]
fn exact_counts_on_real_weights_global() {
    for (kind, sparsity) in [(Kind::BFloat16, 0.5), (Kind::Float, 0.7), (Kind::Half, 0.3)] {
        let params = real_weights(kind);
        let before = snapshot(&params);
        let (report, masks) = run(&params, "global", &[], sparsity, None);
        assert_eq!(
            report.pruned,
            (sparsity * report.total as f64).round() as u64
        );
        check_pass(&params, &before, &masks, sparsity, Scope::Global);
    }
}

#[test]
fn exact_counts_on_real_weights_layerwise() {
    let params = real_weights(Kind::BFloat16);
    let before = snapshot(&params);
    let (_, masks) = run(&params, "layerwise", &[], 0.6, None);
    check_pass(&params, &before, &masks, 0.6, Scope::Tensor);

    let params = real_weights(Kind::Float);
    let before = snapshot(&params);
    let (_, masks) = run(&params, "layerwise", &[("scope", "row")], 0.5, None);
    check_pass(&params, &before, &masks, 0.5, Scope::Row);
}

#[test]
fn nm_masks_are_valid_in_every_group_on_real_weights() {
    for (n, m, kind) in [(2u32, 4u32, Kind::BFloat16), (4, 8, Kind::Float)] {
        let params = real_weights(kind);
        let before = snapshot(&params);
        let (report, masks) = run(&params, "nm", &[], 0.0, Some((n, m)));
        assert_eq!(report.pruned * m as u64, report.total * (m - n) as u64);
        check_pass(
            &params,
            &before,
            &masks,
            0.0,
            Scope::Group(n as i64, m as i64),
        );
    }
}

fn panics_registry() -> birdbone_tch::PluginRegistry {
    let mut reg = builtin_registry();
    let s = reg.load_paths(&[plugin_file("birdbone_fixture_plugin_panics")]);
    assert!(s.rejected.is_empty());
    reg
}

#[test]
fn a_panicking_scorer_returns_an_error_and_the_model_is_unchanged() {
    let params: Vec<_> = real_weights(Kind::Float).into_iter().take(14).collect();
    let before = snapshot(&params);
    let reg = panics_registry();
    let mut pruner = Pruner::new(
        &reg,
        "panicking-scorer",
        &settings(&[]),
        "global",
        &settings(&[]),
    )
    .unwrap();
    let err = pruner
        .run(&params, &PassConfig::default(), Default::default())
        .err()
        .expect("the pass must fail");
    match &err {
        Error::Host(HostError::Plugin {
            component, error, ..
        }) => {
            assert_eq!(component, "panicking-scorer");
            assert_eq!(error.code, ErrorCode::Panicked);
            assert!(
                error
                    .message
                    .contains("scorer bug while scoring model.layers.0"),
                "{err}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert_untouched(&params, &before);
}

#[test]
fn a_panicking_strategy_after_some_decisions_leaves_the_model_unchanged() {
    let params: Vec<_> = real_weights(Kind::Float).into_iter().take(14).collect();
    let before = snapshot(&params);
    let reg = panics_registry();
    let mut pruner = Pruner::new(
        &reg,
        "magnitude",
        &settings(&[]),
        "panicking-strategy",
        &settings(&[]),
    )
    .unwrap();
    let err = pruner
        .run(&params, &PassConfig::default(), Default::default())
        .err()
        .expect("the pass must fail");
    assert!(
        err.to_string().contains("strategy bug after 7 decisions"),
        "{err}"
    );
    assert_untouched(&params, &before);
    // The host survives and a good pass still works afterwards.
    let (report, _) = run(&params, "global", &[], 0.5, None);
    assert_eq!(report.pruned * 2, report.total);
}

#[test]
fn a_nan_weight_fails_every_strategy_and_changes_nothing() {
    let params = real_weights(Kind::BFloat16);
    let victim = params
        .iter()
        .position(|(n, _)| n == "model.layers.7.mlp.up_proj.weight")
        .unwrap();
    {
        let _g = tch::no_grad_guard();
        let _ = params[victim].1.get(100).get(5).fill_(f64::NAN);
    }
    let before = snapshot(&params);
    let expected = (100 * params[victim].1.size()[1] + 5) as u64;
    for (label, err) in failing_magnitude_passes(&params, &before) {
        match &err {
            Error::Host(HostError::NonFinite { param, index, .. }) => {
                assert_eq!(param, "model.layers.7.mlp.up_proj.weight", "{label}");
                assert_eq!(*index, expected, "{label}");
            }
            other => panic!("{label}: unexpected error {other}"),
        }
        assert!(err.to_string().contains("the model was not changed"));
    }
}

#[test]
fn bad_targets_are_refused_before_anything_runs() {
    let params: Vec<_> = real_weights(Kind::Float).into_iter().take(3).collect();
    let reg = builtin_registry();
    let mut pruner =
        Pruner::new(&reg, "magnitude", &settings(&[]), "global", &settings(&[])).unwrap();
    let e = pruner
        .run(
            &params,
            &PassConfig {
                sparsity: 1.5,
                ..Default::default()
            },
            Default::default(),
        )
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("sparsity must be between 0 and 1"),
        "{e}"
    );
    let e = pruner
        .run(
            &params,
            &PassConfig {
                nm: Some((5, 4)),
                ..Default::default()
            },
            Default::default(),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("5:4 is not valid"), "{e}");
    let none = PassConfig {
        filter: ParamFilter {
            include: vec!["nothing.*".into()],
            exclude: vec![],
        },
        ..Default::default()
    };
    let e = pruner
        .run(&params, &none, Default::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("the filter selected none"), "{e}");
}

#[test]
fn host_kth_value_is_exact_over_a_set_of_real_tensors() {
    let params = real_weights(Kind::Float);
    let set: Vec<Tensor> = params.iter().take(5).map(|(_, t)| t.abs()).collect();
    let flat = Tensor::cat(&set.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
    let (sorted, _) = flat.sort(0, false);
    for k in [1u64, 1000, flat.numel() as u64 / 2, flat.numel() as u64] {
        let kv = birdbone_tch::kth_value(&set, k).unwrap();
        let expect = sorted.double_value(&[k as i64 - 1]);
        assert_eq!(kv.value, expect, "k = {k}");
        assert_eq!(
            kv.below,
            flat.lt(expect).sum(Kind::Int64).int64_value(&[]) as u64
        );
        assert_eq!(
            kv.equal,
            flat.eq(expect).sum(Kind::Int64).int64_value(&[]) as u64
        );
    }
}

#[test]
fn wanda_prunes_exactly_per_row_and_leaves_the_statistics_untouched() {
    // Regression: a plugin's cast of f32 statistics once aliased the host's tensor, so its
    // in-place sqrt rewrote the statistics between scoring calls and broke exactness.
    let params = real_weights(Kind::BFloat16);
    let before = snapshot(&params);
    tch::manual_seed(11);
    let mut stats = birdbone_tch::ActivationStats::new();
    let mut originals = Vec::new();
    for (name, w) in &params {
        let sq = (Tensor::randn([w.size()[1]], (Kind::Float, tch::Device::Cpu)) * 2.0).exp();
        originals.push(sq.copy());
        stats.insert(name.clone(), sq, 128);
    }
    let reg = builtin_registry();
    let mut pruner = Pruner::new(
        &reg,
        "wanda",
        &settings(&[]),
        "layerwise",
        &settings(&[("scope", "row")]),
    )
    .unwrap();
    let (report, masks) = pruner
        .run(
            &params,
            &PassConfig {
                sparsity: 0.5,
                ..Default::default()
            },
            birdbone_tch::PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(report.pruned * 2, report.total);
    for ((name, w), (orig, b)) in params.iter().zip(originals.iter().zip(&before)) {
        let (sq, _) = stats.get(name).unwrap();
        assert!(identical(sq, orig), "{name}: statistics changed");
        let keep = masks.get(name).unwrap().keep().unwrap();
        let per_row = keep
            .logical_not()
            .sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64);
        assert_eq!(
            per_row
                .ne(w.size()[1] / 2)
                .sum(Kind::Int64)
                .int64_value(&[]),
            0,
            "{name}"
        );
        // Wanda's comparison: within each row nothing kept scores below anything pruned.
        let score = b.abs().to_kind(Kind::Float) * orig.sqrt();
        let big = Tensor::from(f32::INFINITY);
        let small = Tensor::from(f32::NEG_INFINITY);
        let mp = score.where_self(&keep.logical_not(), &small).amax(1, false);
        let mk = score.where_self(&keep, &big).amin(1, false);
        assert_eq!(
            mp.gt_tensor(&mk).sum(Kind::Int64).int64_value(&[]),
            0,
            "{name}"
        );
    }
}

#[test]
fn a_nan_in_activation_statistics_fails_the_pass_and_changes_nothing() {
    // Column scales are validated in one batch at the end of planning; the error must still name
    // the parameter and the column.
    let params = real_weights(Kind::BFloat16);
    let before = snapshot(&params);
    let mut stats = birdbone_tch::ActivationStats::new();
    let bad = params.len() / 2;
    for (i, (name, w)) in params.iter().enumerate() {
        let sq = Tensor::ones([w.size()[1]], (Kind::Float, tch::Device::Cpu));
        if i == bad {
            let _ = sq.get(5).fill_(f64::NAN);
        }
        stats.insert(name.clone(), sq, 16);
    }
    let reg = builtin_registry();
    for (strategy, st) in [("layerwise", vec![("scope", "row")]), ("global", vec![])] {
        let mut pruner =
            Pruner::new(&reg, "wanda", &settings(&[]), strategy, &settings(&st)).unwrap();
        let err = pruner
            .run(
                &params,
                &PassConfig {
                    sparsity: 0.5,
                    ..Default::default()
                },
                birdbone_tch::PassInputs {
                    stats: Some(&stats),
                    ..Default::default()
                },
            )
            .err()
            .expect("a NaN statistic must fail the pass");
        match &err {
            birdbone_tch::Error::Host(HostError::NonFinite { param, index, .. }) => {
                assert_eq!(param, &params[bad].0, "{strategy}: {err}");
                assert_eq!(*index, 5, "{strategy}: {err}");
            }
            other => panic!("{strategy}: expected a non-finite error, got {other}"),
        }
        for ((name, w), b) in params.iter().zip(&before) {
            assert!(identical(w, b), "{strategy}: {name} changed");
        }
    }
}
