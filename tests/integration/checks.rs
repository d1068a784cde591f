//! Checks shared by the CPU and GPU tests.

use std::collections::BTreeMap;

use birdbone_llama::checkpoint;
use birdbone_tch::{selected, Error, MaskSet, ParamFilter, PassConfig, Pruner};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

pub fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The Linear weights of the real model (the default filter's choice), on the CPU.
pub fn real_weights(kind: Kind) -> Vec<(String, Tensor)> {
    let all = checkpoint::load_dir(&real_model_dir(), Some(kind), Device::Cpu).unwrap();
    selected(&all, &ParamFilter::default()).unwrap()
}

pub fn snapshot(params: &[(String, Tensor)]) -> Vec<Tensor> {
    params.iter().map(|(_, t)| t.copy()).collect()
}

pub fn identical(a: &Tensor, b: &Tensor) -> bool {
    // Bit-for-bit, NaNs included.
    let same = a
        .eq_tensor(b)
        .logical_or(&a.isnan().logical_and(&b.isnan()));
    same.all().int64_value(&[]) == 1
}

pub fn assert_untouched(params: &[(String, Tensor)], before: &[Tensor]) {
    for ((name, t), b) in params.iter().zip(before) {
        assert!(identical(t, b), "{name} changed although the pass failed");
    }
}

/// Runs `magnitude` with each magnitude strategy (global, layer-wise per tensor and per row, 2:4)
/// over `params`, which hold a non-finite weight: each pass must fail and leave the weights as
/// `before`. Returns each strategy's label and error.
pub fn failing_magnitude_passes(
    params: &[(String, Tensor)],
    before: &[Tensor],
) -> Vec<(String, Error)> {
    let strategies: [(&str, &[(&str, &str)], _); 4] = [
        ("global", &[], None),
        ("layerwise", &[], None),
        ("layerwise", &[("scope", "row")], None),
        ("nm", &[], Some((2, 4))),
    ];
    strategies
        .into_iter()
        .map(|(strategy, st, nm)| {
            let label = format!("{strategy} {st:?}");
            let reg = builtin_registry();
            let mut pruner =
                Pruner::new(&reg, "magnitude", &settings(&[]), strategy, &settings(st)).unwrap();
            let cfg = PassConfig {
                nm,
                ..Default::default()
            };
            let err = pruner
                .run(params, &cfg, Default::default())
                .err()
                .unwrap_or_else(|| panic!("{label} accepted a non-finite weight"));
            assert_untouched(params, before);
            (label, err)
        })
        .collect()
}

pub enum Scope {
    Global,
    Tensor,
    Row,
    Group(i64, i64),
}

/// Checks one committed pass: counts exact per scope, weights zero exactly where the mask says
/// and untouched elsewhere, and nothing kept scoring below anything pruned in its scope.
pub fn check_pass(
    params: &[(String, Tensor)],
    before: &[Tensor],
    masks: &MaskSet,
    sparsity: f64,
    scope: Scope,
) {
    let round = |n: i64| (sparsity * n as f64).round() as i64;
    let mut total = 0i64;
    let mut pruned_total = 0i64;
    let (mut max_pruned, mut min_kept) = (f64::NEG_INFINITY, f64::INFINITY);
    for ((name, w), orig) in params.iter().zip(before) {
        let keep = masks
            .get(name)
            .unwrap_or_else(|| panic!("no mask for {name}"))
            .keep()
            .unwrap();
        let pruned = keep.logical_not();
        assert!(
            identical(&w.masked_select(&keep), &orig.masked_select(&keep)),
            "{name}: kept weights changed"
        );
        assert_eq!(
            w.masked_select(&pruned)
                .ne(0.0)
                .sum(Kind::Int64)
                .int64_value(&[]),
            0,
            "{name}: pruned weights not zero"
        );
        let n_pruned = pruned.sum(Kind::Int64).int64_value(&[]);
        total += w.numel() as i64;
        pruned_total += n_pruned;
        let score = orig.abs().to_kind(Kind::Float);
        let big = Tensor::from(f32::INFINITY);
        let small = Tensor::from(f32::NEG_INFINITY);
        match scope {
            Scope::Global => {
                max_pruned =
                    max_pruned.max(score.where_self(&pruned, &small).max().double_value(&[]));
                min_kept = min_kept.min(score.where_self(&keep, &big).min().double_value(&[]));
            }
            Scope::Tensor => {
                assert_eq!(n_pruned, round(w.numel() as i64), "{name}");
                let mp = score.where_self(&pruned, &small).max().double_value(&[]);
                let mk = score.where_self(&keep, &big).min().double_value(&[]);
                assert!(mp <= mk, "{name}: pruned {mp} > kept {mk}");
            }
            Scope::Row => {
                let cols = w.size()[1];
                let per_row = pruned.sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64);
                assert_eq!(
                    per_row.ne(round(cols)).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name}: a row misses its count"
                );
                let mp = score.where_self(&pruned, &small).amax(1, false);
                let mk = score.where_self(&keep, &big).amin(1, false);
                assert_eq!(
                    mp.gt_tensor(&mk).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name}: a row pruned a larger score"
                );
            }
            Scope::Group(n, m) => {
                let groups =
                    pruned
                        .reshape([-1, m])
                        .sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64);
                assert_eq!(
                    groups.ne(m - n).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name}: an N:M group is invalid"
                );
                let s = score.reshape([-1, m]);
                let mp = s
                    .where_self(&pruned.reshape([-1, m]), &small)
                    .amax(1, false);
                let mk = s.where_self(&keep.reshape([-1, m]), &big).amin(1, false);
                assert_eq!(
                    mp.gt_tensor(&mk).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name}: a group pruned a larger score"
                );
            }
        }
    }
    if let Scope::Global = scope {
        assert_eq!(pruned_total, round(total), "global count");
        assert!(
            max_pruned <= min_kept,
            "global: pruned {max_pruned} > kept {min_kept}"
        );
    }
}

pub fn run(
    params: &[(String, Tensor)],
    strategy: &str,
    st: &[(&str, &str)],
    sparsity: f64,
    nm: Option<(u32, u32)>,
) -> (birdbone_tch::PassReport, MaskSet) {
    let reg = builtin_registry();
    let mut pruner =
        Pruner::new(&reg, "magnitude", &settings(&[]), strategy, &settings(st)).unwrap();
    let cfg = PassConfig {
        sparsity,
        nm,
        ..Default::default()
    };
    pruner.run(params, &cfg, Default::default()).unwrap()
}
