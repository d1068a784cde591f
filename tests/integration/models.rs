use birdbone_tch::{ParamSource, PassConfig, Pruner};
use birdbone_tests::*;
use tch::{
    nn::{self, Module},
    CModule, Device, IValue, Kind, Tensor,
};

use crate::checks::*;

fn ptrs(params: &[(String, Tensor)]) -> Vec<usize> {
    params.iter().map(|(_, t)| t.data_ptr() as usize).collect()
}

#[test]
fn a_var_store_is_pruned_in_place() {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "a", 48, 96, Default::default()))
        .add_fn(|x| x.gelu("none"))
        .add(nn::linear(&root / "b", 96, 16, Default::default()));
    let x = Tensor::randn([4, 48], (Kind::Float, Device::Cpu));
    let before_out = tch::no_grad(|| net.forward(&x));
    let before_ptrs = ptrs(&vs.named_parameters().unwrap());

    let reg = builtin_registry();
    let mut pruner = Pruner::new(&reg, "magnitude", &settings(&[]), "nm", &settings(&[])).unwrap();
    let (report, _) = pruner
        .run(
            &vs,
            &PassConfig {
                nm: Some((2, 4)),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
    assert_eq!(report.params.len(), 2, "biases are not pruned by default");
    assert_eq!(report.pruned * 2, report.total);

    assert_eq!(
        ptrs(&vs.named_parameters().unwrap()),
        before_ptrs,
        "storage moved"
    );
    let after_out = tch::no_grad(|| net.forward(&x));
    assert!(
        !identical(&before_out, &after_out),
        "the live module's output did not change"
    );
    // The module computes with exactly the pruned weights.
    let vars = vs.variables();
    let manual = x
        .linear(&vars["a.weight"], Some(&vars["a.bias"]))
        .gelu("none")
        .linear(&vars["b.weight"], Some(&vars["b.bias"]));
    assert!(identical(&manual, &after_out));
}

#[test]
fn a_torchscript_module_is_pruned_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.pt");
    let script = format!(
        "import torch\n\
         torch.manual_seed(0)\n\
         class M(torch.nn.Module):\n\
         \x20   def __init__(self):\n\
         \x20       super().__init__()\n\
         \x20       self.up = torch.nn.Linear(64, 128)\n\
         \x20       self.down = torch.nn.Linear(128, 32)\n\
         \x20   def forward(self, x):\n\
         \x20       return self.down(torch.relu(self.up(x)))\n\
         torch.jit.script(M()).save({:?})\n",
        path.to_str().unwrap()
    );
    // TorchScript reads the class's source, so the script must be a file, not `python -c`.
    let script_path = dir.path().join("make_mlp.py");
    std::fs::write(&script_path, script).unwrap();
    let out = std::process::Command::new(python())
        .arg(&script_path)
        .output()
        .expect("run the venv's python (scripts/test.sh makes it)");
    assert!(
        out.status.success(),
        "making the TorchScript fixture failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut m = CModule::load(&path).unwrap();
    m.set_eval();
    let x = Tensor::randn([8, 64], (Kind::Float, Device::Cpu));
    let run =
        |m: &CModule| match tch::no_grad(|| m.forward_is(&[IValue::Tensor(x.shallow_clone())]))
            .unwrap()
        {
            IValue::Tensor(t) => t,
            other => panic!("unexpected output {other:?}"),
        };
    let before = run(&m);
    let before_ptrs = ptrs(&ParamSource::named_parameters(&m).unwrap());

    let reg = builtin_registry();
    let mut pruner = Pruner::new(
        &reg,
        "magnitude",
        &settings(&[]),
        "layerwise",
        &settings(&[]),
    )
    .unwrap();
    let (report, _) = pruner
        .run(
            &m,
            &PassConfig {
                sparsity: 0.75,
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
    assert_eq!(
        report
            .params
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["down.weight", "up.weight"]
    );
    assert_eq!(
        report.pruned,
        (0.75f64 * (64.0 * 128.0)).round() as u64 + (0.75f64 * (128.0 * 32.0)).round() as u64
    );

    let params = ParamSource::named_parameters(&m).unwrap();
    assert_eq!(ptrs(&params), before_ptrs, "storage moved");
    let after = run(&m);
    assert!(
        !identical(&before, &after),
        "the scripted module's output did not change"
    );
    let p: std::collections::HashMap<_, _> = params.into_iter().collect();
    let manual = x
        .linear(&p["up.weight"], Some(&p["up.bias"]))
        .relu()
        .linear(&p["down.weight"], Some(&p["down.bias"]));
    assert!(manual.allclose(&after, 1e-6, 1e-6, false));
    // The second forward still sees the pruned weights.
    assert!(identical(&run(&m), &after));
}
