//! Rollback and undo on the real SmolLM2 weights: a failure injected before, between and after
//! a commit's writes leaves every weight bit for bit as it was; a completed pass, or several,
//! can be taken back; the training callback's masks come back with its weights.

use std::collections::BTreeMap;

use birdbone_tch::{
    train::{Compression, CompressionConfig, Schedule},
    undo::inject_commit_failure,
    ActivationStats, ParamFilter, PassConfig, PassInputs, Pruner, UndoPolicy,
};
use birdbone_tests::*;
use tch::{Kind, Tensor};

use crate::checks::*;

/// Bit for bit: -0 and +0 differ, NaNs with equal payloads agree.
pub fn bitwise(a: &Tensor, b: &Tensor) -> bool {
    let as_int = |t: &Tensor| match t.kind() {
        Kind::Float => t.view_dtype(Kind::Int),
        Kind::Half | Kind::BFloat16 => t.view_dtype(Kind::Int16),
        _ => t.shallow_clone(),
    };
    a.size() == b.size() && as_int(a).equal(&as_int(b))
}

pub fn assert_bitwise(params: &[(String, Tensor)], before: &[Tensor], what: &str) {
    for ((name, t), b) in params.iter().zip(before) {
        assert!(bitwise(t, b), "{what}: {name} is not bit for bit as before");
    }
}

fn pruner(scorer: &str, strategy: &str, st: &[(&str, &str)]) -> Pruner {
    let st: BTreeMap<String, String> = st
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Pruner::new(&builtin_registry(), scorer, &BTreeMap::new(), strategy, &st).unwrap()
}

/// Squared-input sums of the right shapes (Wanda needs some; their values do not matter here).
fn fake_stats(params: &[(String, Tensor)]) -> ActivationStats {
    let sums: BTreeMap<String, (Tensor, u64)> = params
        .iter()
        .map(|(n, t)| {
            (
                n.clone(),
                (
                    Tensor::rand([t.size()[1]], (Kind::Float, t.device())) + 0.5,
                    64,
                ),
            )
        })
        .collect();
    ActivationStats::from(sums)
}

/// The settings a commit can fail under: the engines' fused path (magnitude: every weight kept
/// whole before the writes), an N:M rule, and scores built before the commit (Wanda on the CPU:
/// masks known in advance, only the pruned values kept).
type Setting = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    f64,
    Option<(u32, u32)>,
);
const SETTINGS: &[Setting] = &[
    ("magnitude", "global", &[], 0.5, None),
    ("magnitude", "nm", &[], 0.5, Some((2, 4))),
    ("wanda", "layerwise", &[("scope", "row")], 0.6, None),
];

pub fn failure_at_every_stage_restores_the_weights(params: &[(String, Tensor)]) {
    let n = params.len();
    let stats = fake_stats(params);
    for &(scorer, strategy, st, sparsity, nm) in SETTINGS {
        for after in [0, 1, n / 2, n - 1, n] {
            let before = snapshot(params);
            let mut p = pruner(scorer, strategy, st);
            inject_commit_failure(Some(after));
            let cfg = PassConfig {
                sparsity,
                nm,
                ..Default::default()
            };
            let Err(err) = p.run(
                params,
                &cfg,
                PassInputs {
                    stats: Some(&stats),
                    ..Default::default()
                },
            ) else {
                panic!("the injected failure did not fire");
            };
            inject_commit_failure(None);
            assert!(err.to_string().contains("injected commit failure"), "{err}");
            assert_bitwise(
                params,
                &before,
                &format!("{scorer}+{strategy}, failure after {after} of {n}"),
            );
        }
    }
}

#[test]
fn a_failed_commit_leaves_every_weight_as_it_was_cpu() {
    for kind in [Kind::Float, Kind::BFloat16] {
        failure_at_every_stage_restores_the_weights(&real_weights(kind));
    }
}

#[test]
fn without_the_journal_a_failed_commit_leaves_the_model_partly_pruned() {
    // What rollback protects against: the same failure with rollback turned off.
    let params = real_weights(Kind::Float);
    let before = snapshot(&params);
    let mut p = pruner("magnitude", "global", &[]);
    p.set_undo(UndoPolicy {
        rollback: false,
        ..Default::default()
    })
    .unwrap();
    inject_commit_failure(Some(params.len() / 2));
    assert!(p
        .run(&params, &PassConfig::default(), PassInputs::default())
        .is_err());
    inject_commit_failure(None);
    let changed = params
        .iter()
        .zip(&before)
        .filter(|((_, t), b)| !bitwise(t, b))
        .count();
    assert_eq!(changed, params.len() / 2, "the first half was written");
}

pub fn passes_undone_in_order_return_to_the_start(params: &[(String, Tensor)]) {
    let stats = fake_stats(params);
    let start = snapshot(params);
    let mut p = pruner("magnitude", "layerwise", &[]);
    p.set_undo(UndoPolicy {
        passes: 8,
        ..Default::default()
    })
    .unwrap();
    let mut w = pruner("wanda", "layerwise", &[("scope", "row")]);
    w.set_undo(UndoPolicy {
        passes: 8,
        ..Default::default()
    })
    .unwrap();
    // Three passes of rising sparsity, by two pruners; a snapshot after each.
    let mut after = vec![];
    for (i, sparsity) in [0.3, 0.5, 0.7].into_iter().enumerate() {
        let cfg = PassConfig {
            sparsity,
            ..Default::default()
        };
        let inputs = PassInputs {
            stats: Some(&stats),
            ..Default::default()
        };
        let pr = if i == 1 { &mut w } else { &mut p };
        pr.run(params, &cfg, inputs).unwrap();
        after.push(snapshot(params));
    }
    assert_eq!((p.history().len(), w.history().len()), (2, 1));
    // Newest first: each undo returns to the state before that pass.
    assert!(p.undo().unwrap());
    assert_bitwise(params, &after[1], "after undoing the third pass");
    assert!(w.undo().unwrap());
    assert_bitwise(params, &after[0], "after undoing the second pass");
    assert!(p.undo().unwrap());
    assert_bitwise(params, &start, "after undoing all three");
    assert!(!p.undo().unwrap(), "nothing left to undo");
}

#[test]
fn passes_undone_in_order_return_to_the_start_cpu() {
    passes_undone_in_order_return_to_the_start(&real_weights(Kind::BFloat16));
}

#[test]
fn undo_keeps_only_the_changed_values_on_the_cpu_within_its_memory_limit() {
    let params = real_weights(Kind::Float);
    let dense: u64 = params.iter().map(|(_, t)| 4 * t.numel() as u64).sum();
    let mut p = pruner("magnitude", "global", &[]);
    p.set_undo(UndoPolicy {
        passes: 4,
        ..Default::default()
    })
    .unwrap();
    p.run(&params, &PassConfig::default(), PassInputs::default())
        .unwrap();
    let one = p.history().bytes();
    // f32 at 50%: one bit per weight and the 4 bytes of each pruned one, about 53% of a copy.
    let expected = dense / 32 + dense / 2;
    assert!(
        one.abs_diff(expected) < dense / 100,
        "undo holds {one} bytes; expected about {expected}"
    );
    // A limit of 1.5 passes keeps the newest one only.
    p.set_undo(UndoPolicy {
        passes: 4,
        max_bytes: one * 3 / 2,
        ..Default::default()
    })
    .unwrap();
    p.run(
        &params,
        &PassConfig {
            sparsity: 0.6,
            ..Default::default()
        },
        PassInputs::default(),
    )
    .unwrap();
    assert_eq!(p.history().len(), 1);
    // Undo without rollback is refused: undo is the rollback journal, kept.
    assert!(p
        .set_undo(UndoPolicy {
            rollback: false,
            passes: 1,
            ..Default::default()
        })
        .is_err());
}

pub fn the_training_callback_takes_a_pass_back_with_its_masks(params: &[(String, Tensor)]) {
    let before = snapshot(params);
    let cfg = CompressionConfig {
        schedule: Schedule::OneShot {
            at_step: 1_000_000,
            sparsity: 0.5,
        },
        filter: ParamFilter::default(),
        nm: None,
        growth_plates: None,
        regrow: None,
        layer_plates: None,
    };
    let mut c = Compression::new(pruner("magnitude", "layerwise", &[]), cfg).unwrap();
    c.keep_undo(2);
    c.prune_now(params, 0.4, None).unwrap();
    let after_first = snapshot(params);
    let masks_first = c.masks().len();
    c.prune_now(params, 0.6, None).unwrap();
    assert_eq!(c.undoable_passes(), 2);
    assert!(c.undo_last_pass().unwrap());
    assert_bitwise(params, &after_first, "the callback after one undo");
    assert_eq!(c.masks().len(), masks_first);
    let (pruned, total) = c.masks().counts().unwrap();
    assert!(
        (pruned as f64 / total as f64 - 0.4).abs() < 1e-3,
        "the first pass's masks are back: {pruned} of {total}"
    );
    // After the masks re-apply (what every step does), nothing moves.
    c.masks().apply(params).unwrap();
    assert_bitwise(params, &after_first, "masks re-applied after undo");
    assert!(c.undo_last_pass().unwrap());
    assert_bitwise(params, &before, "the callback after two undos");
    assert!(c.masks().is_empty());
    assert!(!c.undo_last_pass().unwrap());
}

#[test]
fn the_training_callback_takes_a_pass_back_with_its_masks_cpu() {
    the_training_callback_takes_a_pass_back_with_its_masks(&real_weights(Kind::Float));
}
