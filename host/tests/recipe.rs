//! Recipe files: the shipped examples, both syntaxes, strict fields, llm-compressor recipes, and
//! the JSON Schema in docs/ kept in step with the code.

use std::path::{Path, PathBuf};

use birdbone_host::{
    recipe::{CalibrationMode, NmPattern, Scalar},
    schedule::Schedule,
    Recipe,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn shipped_recipes_read_as_documented() {
    let r = |n: &str| Recipe::from_file(&root().join("examples/recipes").join(n)).unwrap();
    let m = r("magnitude-global-50.yaml");
    assert_eq!(
        (m.scorer.name.as_str(), m.strategy.name.as_str()),
        ("magnitude", "global")
    );
    assert_eq!(m.sparsity, 0.5);
    assert!(m.calibration.is_none());

    for (file, allocator) in [("owl-70.yaml", "owl"), ("birdbone-70.yaml", "birdbone")] {
        let a = r(file);
        assert_eq!(
            a.allocator.as_ref().map(|c| c.name.as_str()),
            Some(allocator)
        );
        assert_eq!((a.sparsity, a.strategy.name.as_str()), (0.7, "layerwise"));
    }

    let w = r("wanda-50.yaml");
    assert_eq!(w.scorer.name, "wanda");
    assert_eq!(w.strategy.params["scope"], Scalar::Text("row".into()));
    let c = w.calibration.unwrap();
    assert_eq!(
        (c.text.as_str(), c.windows, c.length, c.mode),
        ("c4.utf8", 32, 512, CalibrationMode::OnePass)
    );

    let nm = r("wanda-2of4.yaml");
    assert_eq!(nm.pattern, Some(NmPattern { n: 2, m: 4 }));
    assert_eq!(nm.pass_config().nm, Some((2, 4)));

    let g = r("gradual-magnitude-50.json");
    let comp = g.compression().unwrap();
    assert!(
        matches!(comp.schedule, Schedule::Gradual { final_sparsity, .. } if final_sparsity == 0.5)
    );
    assert!(comp.growth_plates.is_some());
    assert!(
        m.compression().is_err(),
        "a recipe without training has no schedule"
    );

    let lc = r("llm-compressor-wanda-50.yaml");
    assert_eq!(lc.scorer.name, "wanda");
    assert_eq!(lc.strategy.name, "layerwise");
    assert_eq!(lc.include, vec![r"re:model.layers.\d*$".to_string()]);
    assert_eq!(lc.exclude, vec!["re:.*lm_head".to_string()]);
}

#[test]
fn yaml_and_json_say_the_same() {
    let d = tempfile::tempdir().unwrap();
    let y = write(&d, "r.yaml", "scorer: wanda\nstrategy: {name: layerwise, params: {scope: row}}\nsparsity: 0.6\ndtype: bf16\ndevice: cuda:1\noutput: {max_shard_size: 2GB}\n");
    let j = write(
        &d,
        "r.json",
        r#"{"scorer": "wanda", "strategy": {"name": "layerwise", "params": {"scope": "row"}}, "sparsity": 0.6, "dtype": "bfloat16", "device": "cuda:1", "output": {"max_shard_size": "2000MB"}}"#,
    );
    let (a, b) = (
        Recipe::from_file(&y).unwrap(),
        Recipe::from_file(&j).unwrap(),
    );
    assert_eq!(a, b);
    assert_eq!(a.output.max_shard_size.unwrap().0, 2_000_000_000);
    // The written form reads back as the same recipe.
    let again = write(&d, "again.yaml", &a.to_yaml());
    assert_eq!(Recipe::from_file(&again).unwrap(), a);
}

#[test]
fn mistakes_are_errors_that_name_them() {
    let d = tempfile::tempdir().unwrap();
    let err = |text: &str| {
        Recipe::from_file(&write(&d, "bad.yaml", text))
            .unwrap_err()
            .to_string()
    };
    assert!(err("scorer: wanda\nsparsty: 0.5\n").contains("sparsty"));
    assert!(err("strategy: {name: nm, parms: {}}\n").contains("parms"));
    assert!(err("sparsity: 2\n").contains("between 0 and 1"));
    assert!(err("pattern: \"4:2\"\n").contains("4:2"));
    assert!(err("device: gpu\n").contains("gpu"));
    assert!(err("dtype: f8\n").contains("f8"));
    assert!(err("output: {max_shard_size: 5XB}\n").contains("XB"));
    assert!(err("calibration: {windows: 0}\n").contains("windows"));
    assert!(err("calibration: {mode: twice}\n").contains("twice"));
    assert!(err("include: ['re:(']\n").contains("re:("));
    assert!(err(
        "sparsity: 0.5\ntraining: {schedule: {kind: one_shot, at_step: 3, sparsity: 0.7}}\n"
    )
    .contains("make them equal"));
    assert!(
        err("training: {schedule: {kind: one_shot, at_step: 3, sparsity: 0.5, extra: 1}}\n")
            .contains("extra")
    );
}

#[test]
fn llm_compressor_recipes_map_one_to_one() {
    let d = tempfile::tempdir().unwrap();
    let read = |text: &str| Recipe::from_file(&write(&d, "lc.yaml", text));
    let r = read(
        "oneshot_stage:\n  pruning_modifiers:\n    WandaPruningModifier:\n      sparsity: 0.5\n      mask_structure: \"2:4\"\n      targets: [LlamaDecoderLayer]\n      sequential_update: true\n",
    )
    .unwrap();
    assert_eq!(
        (r.scorer.name.as_str(), r.strategy.name.as_str()),
        ("wanda", "nm")
    );
    assert_eq!(r.pattern, Some(NmPattern { n: 2, m: 4 }));
    assert_eq!(r.calibration.unwrap().mode, CalibrationMode::Sequential);
    assert_eq!(r.include, vec![r"re:model\.layers\.\d+$".to_string()]);
    // llm-compressor's "N:M" prunes N of M; Birdbone's pattern keeps N of M.
    let r = read("sparsity_modifiers:\n  SparseGPTModifier:\n    sparsity: 0.75\n    mask_structure: \"3:4\"\n    ignore: [lm_head]\n").unwrap();
    assert_eq!(r.strategy.name, "sparsegpt");
    assert_eq!(r.pattern, Some(NmPattern { n: 1, m: 4 }));
    assert_eq!(r.calibration.unwrap().mode, CalibrationMode::Sequential);
    let r =
        read("m_modifiers:\n  SparseGPTModifier: {sparsity: 0.5, block_size: 64, dampening_frac: 0.05}\n")
            .unwrap();
    assert_eq!((r.strategy.name.as_str(), r.pattern), ("sparsegpt", None));
    assert_eq!(r.strategy.params.get("blocksize"), Some(&Scalar::Int(64)));
    assert_eq!(
        r.strategy.params.get("percdamp"),
        Some(&Scalar::Float(0.05))
    );

    // "0:M" prunes none of M: unstructured, as llm-compressor reads it.
    let r =
        read("m_modifiers:\n  WandaPruningModifier: {sparsity: 0.5, mask_structure: \"0:4\"}\n")
            .unwrap();
    assert_eq!((r.strategy.name.as_str(), r.pattern), ("layerwise", None));
    let err = |text: &str| read(text).unwrap_err().to_string();
    assert!(
        err("m_modifiers:\n  WandaPruningModifier: {ignore: [LlamaRMSNorm]}\n")
            .contains("LlamaRMSNorm")
    );
    assert!(err("s_stage:\n  m_modifiers:\n    GPTQModifier: {}\n").contains("GPTQModifier"));
    assert!(err(
        "s_stage:\n  m_modifiers:\n    WandaPruningModifier: {sparsity: 0.5, block_size: 128}\n"
    )
    .contains("block_size"));
    assert!(
        err("s_stage:\n  run_type: train\n  m_modifiers:\n    WandaPruningModifier: {}\n")
            .contains("run_type")
    );
    assert!(
        err("s_stage:\n  m_modifiers:\n    WandaPruningModifier: {targets: [Conv2d]}\n")
            .contains("Conv2d")
    );
    assert!(
        err("version: 1\ns_stage:\n  m_modifiers:\n    WandaPruningModifier: {}\n")
            .contains("version")
    );
}

#[test]
fn docs_schema_is_the_generated_one() {
    let path = root().join("docs/recipe.schema.json");
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = Recipe::json_schema();
    if std::env::var_os("BIRDBONE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    assert!(
        on_disk == generated,
        "docs/recipe.schema.json is stale: run `cargo run -p birdbone-cli -- recipe-schema > docs/recipe.schema.json` (or BIRDBONE_BLESS=1 cargo test -p birdbone-host)"
    );
    // The schema itself rejects unknown fields, as the reader does.
    let v: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(v["additionalProperties"], serde_json::Value::Bool(false));
    for field in [
        "scorer",
        "strategy",
        "sparsity",
        "pattern",
        "include",
        "exclude",
        "calibration",
        "device",
        "dtype",
        "output",
        "training",
    ] {
        assert!(
            v["properties"].get(field).is_some(),
            "schema lacks '{field}'"
        );
    }
}
