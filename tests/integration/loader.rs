use std::collections::BTreeMap;

use birdbone_host_api::{ComponentKind, DeviceSet, Granularity, InputSet};
use birdbone_tch::{host_ops, HostError, PluginRegistry};
use birdbone_tests::*;

fn no_settings() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn builtin_plugins_load_from_their_shared_libraries() {
    let dir = plugin_dir_with(&builtin_plugin_files());
    let mut reg = PluginRegistry::new();
    let summary = reg.load_dir(dir.path());
    assert_eq!(summary.loaded.len(), 9, "{:?}", summary.rejected);
    assert!(summary.rejected.is_empty());
    let names: Vec<&str> = reg.components().map(|c| c.info.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "birdbone",
            "fisher",
            "global",
            "layerwise",
            "magnitude",
            "movement",
            "nm",
            "owl",
            "ria",
            "sparsegpt",
            "taylor",
            "uniform",
            "wanda"
        ]
    );
    let sparsegpt = reg.component("sparsegpt").unwrap();
    assert_eq!(sparsegpt.info.kind, ComponentKind::Strategy);
    assert_eq!(sparsegpt.info.capabilities.inputs, InputSet::HESSIAN);
    assert!(sparsegpt
        .info
        .capabilities
        .granularity
        .contains(Granularity::NM));
    let taylor = reg.component("taylor").unwrap();
    assert_eq!(taylor.info.capabilities.inputs, InputSet::GRADIENTS);
    assert!(taylor.info.capabilities.stateful);

    let mag = reg.component("magnitude").unwrap();
    assert_eq!(mag.info.kind, ComponentKind::Scorer);
    assert_eq!(mag.info.capabilities.devices, DeviceSet::ALL);
    assert_eq!(mag.info.capabilities.inputs, InputSet::NONE);
    assert!(mag
        .info
        .capabilities
        .granularity
        .contains(Granularity::Rows));
    let nm = reg.component("nm").unwrap();
    let params: Vec<(&str, String)> = nm
        .info
        .params
        .iter()
        .map(|p| (p.name.as_str(), p.default.to_string()))
        .collect();
    assert_eq!(params, [("n", "2".to_string()), ("m", "4".to_string())]);
    assert!(nm.info.capabilities.granularity.contains(Granularity::NM));

    // A second scan of the same folder loads nothing new.
    assert!(reg.load_dir(dir.path()).loaded.is_empty());
}

#[test]
fn third_party_plugin_built_outside_the_workspace_loads_and_runs() {
    let so = workspace_root()
        .join("examples/third-party-plugin/target/debug/libbirdbone_example_relative_magnitude.so");
    assert!(
        so.exists(),
        "{} is missing: scripts/test.sh builds examples/third-party-plugin first",
        so.display()
    );
    let mut reg = builtin_registry();
    let s = reg.load_paths(&[so]);
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    let c = reg
        .component("relative-magnitude")
        .expect("the example's scorer");
    assert_eq!(c.plugin.manifest.name.as_str(), "relative-magnitude");

    // It scores through the host ops (dense scores) and prunes exactly like a built-in.
    let _g = tch::no_grad_guard();
    let w = tch::Tensor::randn([64, 48], (tch::Kind::Float, tch::Device::Cpu));
    let params = vec![("layer.weight".to_string(), w.shallow_clone())];
    let mut pruner = birdbone_tch::Pruner::new(
        &reg,
        "relative-magnitude",
        &no_settings(),
        "layerwise",
        &no_settings(),
    )
    .unwrap();
    let cfg = birdbone_tch::PassConfig {
        sparsity: 0.25,
        ..Default::default()
    };
    let (report, _) = pruner.run(&params, &cfg, Default::default()).unwrap();
    assert_eq!(report.pruned, 768);
    assert_eq!(w.eq(0.0).sum(tch::Kind::Int64).int64_value(&[]), 768);
}

/// A plugin built against the previous minor (the frozen ABI 1.0 `birdbone-host-api` in
/// tests/fixtures/abi-1.0) loads into this host and prunes exactly as the same code built
/// against today's ABI: the built-in wanda and layerwise, on real weights and statistics.
#[test]
fn plugins_built_against_abi_1_0_load_and_run_unchanged() {
    let so = workspace_root().join("target/fixtures/debug/libbirdbone_fixture_plugin_abi_1_0.so");
    assert!(
        so.exists(),
        "{} is missing: scripts/test.sh builds tests/fixtures/abi-1.0/plugin first",
        so.display()
    );
    let mut reg = builtin_registry();
    let s = reg.load_paths(&[so]);
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);
    let old = reg.component("wanda-abi-1-0").expect("the 1.0 scorer");
    assert_eq!(
        (old.plugin.manifest.abi.major, old.plugin.manifest.abi.minor),
        (1, 0)
    );
    assert_eq!(
        (birdbone_host_api::ABI_MAJOR, birdbone_host_api::ABI_MINOR),
        (1, 2)
    );

    let _g = tch::no_grad_guard();
    let weights: Vec<(String, tch::Tensor)> = crate::checks::real_weights(tch::Kind::Float)
        .into_iter()
        .filter(|(n, _)| n.starts_with("model.layers.1") && n.ends_with("proj.weight"))
        .collect();
    let stats: BTreeMap<String, (tch::Tensor, u64)> = weights
        .iter()
        .map(|(n, w)| {
            let g = tch::Tensor::randn([w.size()[1]], (tch::Kind::Float, tch::Device::Cpu));
            (n.clone(), (g.square() * 100.0, 512))
        })
        .collect();
    let stats = birdbone_tch::ActivationStats::from(stats);
    let run = |scorer: &str, strategy: &str| -> Vec<tch::Tensor> {
        let params: Vec<(String, tch::Tensor)> =
            weights.iter().map(|(n, w)| (n.clone(), w.copy())).collect();
        let mut settings = BTreeMap::new();
        settings.insert("scope".to_string(), "row".to_string());
        let mut pruner =
            birdbone_tch::Pruner::new(&reg, scorer, &no_settings(), strategy, &settings).unwrap();
        let cfg = birdbone_tch::PassConfig {
            sparsity: 0.5,
            ..Default::default()
        };
        let inputs = birdbone_tch::PassInputs {
            stats: Some(&stats),
            ..Default::default()
        };
        pruner.run(&params, &cfg, inputs).unwrap();
        params.into_iter().map(|(_, t)| t).collect()
    };
    let old = run("wanda-abi-1-0", "layerwise-abi-1-0");
    let new = run("wanda", "layerwise");
    assert!(old.len() > 10);
    for (o, n) in old.iter().zip(&new) {
        assert!(o.equal(n), "the 1.0 plugin pruned differently");
    }
}

#[test]
fn incompatible_plugins_are_rejected_with_reasons_and_the_rest_load() {
    let mut files = builtin_plugin_files();
    for f in [
        "plugin_future_abi",
        "plugin_layout_mismatch",
        "plugin_newer_minor",
    ] {
        files.push(plugin_file(&format!("birdbone_fixture_{f}")));
    }
    let dir = plugin_dir_with(&files);
    std::fs::write(dir.path().join("garbage.so"), b"this is not an ELF file").unwrap();
    std::fs::copy(
        "/lib/x86_64-linux-gnu/libm.so.6",
        dir.path().join("libm-copy.so"),
    )
    .unwrap();

    let mut reg = PluginRegistry::new();
    let s = reg.load_dir(dir.path());
    assert_eq!(s.loaded.len(), 9);
    let reason = |needle: &str| -> String {
        let r = s
            .rejected
            .iter()
            .find(|r| r.path.to_string_lossy().contains(needle))
            .unwrap_or_else(|| panic!("{needle} not rejected: {:?}", s.rejected));
        r.reason.clone()
    };
    assert!(
        reason("future_abi").contains("ABI 2.x; this host speaks 1.2"),
        "{}",
        reason("future_abi")
    );
    assert!(
        reason("layout_mismatch").contains("ABI layout differs"),
        "{}",
        reason("layout_mismatch")
    );
    assert!(
        reason("newer_minor").contains("ABI 1.3; this host speaks 1.2"),
        "{}",
        reason("newer_minor")
    );
    assert!(
        reason("garbage").contains("not a loadable shared library"),
        "{}",
        reason("garbage")
    );
    assert!(
        reason("libm-copy").contains("not a Birdbone plugin"),
        "{}",
        reason("libm-copy")
    );
    assert_eq!(s.rejected.len(), 5);
    // The good ones work.
    assert!(reg
        .create_strategy("global", &no_settings(), host_ops())
        .is_ok());
}

#[test]
fn duplicate_component_names_are_refused() {
    let global = plugin_file("birdbone_plugin_global");
    let dir = plugin_dir_with(std::slice::from_ref(&global));
    std::fs::copy(&global, dir.path().join("libzz_global_again.so")).unwrap();
    let mut reg = PluginRegistry::new();
    let s = reg.load_dir(dir.path());
    assert_eq!(s.rejected.len(), 1, "{:?}", s.rejected);
    assert!(
        s.rejected[0]
            .reason
            .contains("component 'global' is already offered by"),
        "{}",
        s.rejected[0].reason
    );
    assert_eq!(reg.components().count(), 1);
}

#[test]
fn twenty_plugin_files_load_in_one_scan() {
    // 9 built-ins plus 11 renamed copies: every copy loads as a library and each of its
    // components is refused for its duplicate name (training-signals and allocators offer
    // three); nothing is unloaded or lost.
    let files = builtin_plugin_files();
    let dir = plugin_dir_with(&files);
    for i in 0..11 {
        let src = &files[i % files.len()];
        std::fs::copy(src, dir.path().join(format!("libcopy{i:02}.so"))).unwrap();
    }
    let components_of = |f: &std::path::PathBuf| {
        if f.to_string_lossy().contains("training_signals")
            || f.to_string_lossy().contains("allocators")
        {
            3
        } else {
            1
        }
    };
    let duplicates: usize = (0..11)
        .map(|i| components_of(&files[i % files.len()]))
        .sum();
    let mut reg = PluginRegistry::new();
    let s = reg.load_dir(dir.path());
    assert_eq!(s.loaded.len(), 20);
    assert_eq!(s.rejected.len(), duplicates);
    assert!(s
        .rejected
        .iter()
        .all(|r| r.reason.contains("is already offered by")));
    assert_eq!(reg.components().count(), 13);
    eprintln!("loaded 20 plugin files in {:.1} ms", s.seconds * 1e3);
}

#[test]
fn component_configuration_is_checked_before_creation() {
    let reg = builtin_registry();
    let err = |r: Result<(), HostError>| r.expect_err("an error").to_string();
    let s = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>()
    };

    let e = err(reg
        .create_strategy("nm", &s(&[("q", "1")]), host_ops())
        .map(drop));
    assert!(
        e.contains("unknown parameter 'q'") && e.contains("n, m"),
        "{e}"
    );
    let e = err(reg
        .create_strategy("nm", &s(&[("n", "two")]), host_ops())
        .map(drop));
    assert!(e.contains("wants a Int, got 'two'"), "{e}");
    let e = err(reg
        .create_strategy("nm", &s(&[("n", "5"), ("m", "4")]), host_ops())
        .map(drop));
    assert!(e.contains("5:4 is not an N:M pattern"), "{e}");
    let e = err(reg
        .create_strategy("layerwise", &s(&[("scope", "column")]), host_ops())
        .map(drop));
    assert!(e.contains("scope must be 'tensor' or 'row'"), "{e}");
    let e = err(reg
        .create_scorer("wanda2", &no_settings(), host_ops())
        .map(drop));
    assert!(
        e.contains("no loaded plugin offers a scorer named 'wanda2'") && e.contains("magnitude"),
        "{e}"
    );
    let e = err(reg
        .create_scorer("global", &no_settings(), host_ops())
        .map(drop));
    assert!(e.contains("scorer named 'global'"), "{e}");
}
