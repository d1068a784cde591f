use birdbone_tch::{Error, HostError, MaskSet, PassConfig, Pruner};
use birdbone_tests::*;
use tch::{
    nn::{self, Module, OptimizerConfig},
    Device, Kind, Tensor,
};

use crate::checks::*;

#[test]
fn masks_round_trip_through_safetensors() {
    let params: Vec<_> = real_weights(Kind::BFloat16).into_iter().take(21).collect();
    let (_, masks) = run(&params, "global", &[], 0.5, None);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("masks.safetensors");
    masks.save(&path).unwrap();
    let back = MaskSet::load(&path, Device::Cpu).unwrap();
    assert_eq!(back.len(), masks.len());
    for (name, m) in masks.iter() {
        let b = back.get(name).unwrap();
        assert_eq!(b.shape, m.shape);
        assert!(identical(&b.bits, &m.bits), "{name}");
    }
    assert_eq!(back.counts().unwrap(), masks.counts().unwrap());

    // A truncated file is an error, not a panic, and names the file.
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = MaskSet::load(&cut, Device::Cpu)
        .err()
        .expect("truncated mask file must fail");
    assert!(
        matches!(e, Error::Host(HostError::Format { .. }))
            && e.to_string().contains("cut.safetensors"),
        "{e}"
    );
    // A model checkpoint is not a mask file.
    let e = MaskSet::load(&real_model_dir().join("model.safetensors"), Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("not a Birdbone mask file"), "{e}");
}

/// A small MLP in a VarStore, trained on a fixed regression task.
fn mlp(vs: &nn::VarStore) -> impl Module {
    let root = vs.root();
    nn::seq()
        .add(nn::linear(&root / "fc1", 32, 64, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "fc2", 64, 8, Default::default()))
}

#[test]
fn masks_hold_pruned_weights_at_zero_through_adamw_steps() {
    tch::manual_seed(7);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = mlp(&vs);
    let x = Tensor::randn([128, 32], (Kind::Float, Device::Cpu));
    let y = Tensor::randn([128, 8], (Kind::Float, Device::Cpu));
    let mut opt = nn::AdamW::default().build(&vs, 1e-2).unwrap();
    // Some steps first, so the optimizer's moments are full when pruning happens.
    for _ in 0..5 {
        opt.backward_step(&net.forward(&x).mse_loss(&y, tch::Reduction::Mean));
    }
    let reg = builtin_registry();
    let mut pruner =
        Pruner::new(&reg, "magnitude", &settings(&[]), "global", &settings(&[])).unwrap();
    let (report, masks) = pruner
        .run(
            &vs,
            &PassConfig {
                sparsity: 0.5,
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
    assert_eq!(report.total, 32 * 64 + 64 * 8);
    assert_eq!(report.pruned, report.total / 2);
    let zeros = |vs: &nn::VarStore| -> i64 {
        vs.variables()
            .iter()
            .filter(|(n, _)| n.ends_with("weight"))
            .map(|(_, t)| t.eq(0.0).sum(Kind::Int64).int64_value(&[]))
            .sum()
    };
    assert_eq!(zeros(&vs), report.pruned as i64);
    for step in 0..5 {
        opt.zero_grad();
        net.forward(&x)
            .mse_loss(&y, tch::Reduction::Mean)
            .backward();
        opt.step();
        // Adam's moments regrow the pruned weights...
        assert!(
            zeros(&vs) < report.pruned as i64,
            "step {step}: nothing regrew, the test proves nothing"
        );
        // ...and the masks put them back, exactly.
        assert_eq!(masks.apply(&vs).unwrap(), report.pruned);
        assert_eq!(zeros(&vs), report.pruned as i64, "step {step}");
    }
    // Masked gradients: no gradient reaches a pruned weight.
    opt.zero_grad();
    net.forward(&x)
        .mse_loss(&y, tch::Reduction::Mean)
        .backward();
    masks.mask_gradients(&vs).unwrap();
    for (name, t) in vs.variables() {
        if let Some(m) = masks.get(&name) {
            let g = t.grad();
            let leaked = g
                .masked_select(&m.keep().unwrap().logical_not())
                .ne(0.0)
                .sum(Kind::Int64)
                .int64_value(&[]);
            assert_eq!(leaked, 0, "{name}");
        }
    }
    // Masks saved and loaded re-apply the same way.
    let dir = tempfile::tempdir().unwrap();
    masks.save(&dir.path().join("m.safetensors")).unwrap();
    let loaded = MaskSet::load(&dir.path().join("m.safetensors"), Device::Cpu).unwrap();
    opt.step();
    assert_eq!(loaded.apply(&vs).unwrap(), report.pruned);
    assert_eq!(zeros(&vs), report.pruned as i64);
}
