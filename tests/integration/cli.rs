//! The `birdbone` command as a user runs it, on the real model: a recipe pruned with
//! calibration into a folder that plain transformers loads with equal logits; masks applied
//! again; hub ids from a cache folder built here; JSON output against its documented shape;
//! pictures that parse and hold their series; bad input refused before anything loads.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use birdbone_llama::{checkpoint, perplexity, token_windows, Loaded};
use birdbone_tch::{PassConfig, PassInputs, Pruner};
use birdbone_tests::*;
use serde_json::Value;
use tch::{Device, Kind, Tensor};

pub(crate) fn birdbone() -> Command {
    let exe = build_dir().join("birdbone");
    assert!(
        exe.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        exe.display()
    );
    // The plugins are found beside the executable, as for a user.
    Command::new(exe)
}

/// Runs a command line that must succeed; its stdout and stderr.
pub(crate) fn ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("run birdbone");
    let (so, se) = text(&out);
    assert!(out.status.success(), "{cmd:?} failed:\n{se}");
    (so, se)
}

/// Runs a command line that must fail; its stderr.
pub(crate) fn fails(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run birdbone");
    let (_, se) = text(&out);
    assert!(!out.status.success(), "{cmd:?} should have failed");
    assert!(!se.contains("panicked"), "{cmd:?} panicked:\n{se}");
    se
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub(crate) fn recipe(name: &str) -> PathBuf {
    workspace_root().join("examples/recipes").join(name)
}

/// A JSON value's shape: objects keep their keys, arrays their first element, scalars become
/// their type's name. What the documented output schema fixes; the values may vary.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::Number(_) => "number".into(),
        Value::String(_) => "string".into(),
        Value::Bool(_) => "bool".into(),
        Value::Null => "null".into(),
    }
}

/// Compares a command's JSON output's shape with `tests/snapshots/NAME.json`
/// (BIRDBONE_BLESS=1 writes it).
fn snapshot(name: &str, json: &str) -> Value {
    let v: Value =
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: not JSON ({e}):\n{json}"));
    let path = workspace_root()
        .join("tests/snapshots")
        .join(format!("{name}.json"));
    let got = serde_json::to_string_pretty(&shape(&v)).unwrap() + "\n";
    if std::env::var_os("BIRDBONE_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
    } else {
        let want = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            want == got,
            "the JSON of `{name}` changed shape (docs/cli.md documents it; BIRDBONE_BLESS=1 rewrites {}):\n{got}",
            path.display()
        );
    }
    v
}

fn logits_of(dir: &Path, ids: &[i64]) -> Vec<Vec<f64>> {
    let m = Loaded::load(dir.to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let out = tch::no_grad(|| {
        m.model
            .forward(&Tensor::from_slice(ids).unsqueeze(0), None, None)
    })
    .unwrap();
    let n = ids.len() as i64;
    (n - 4..n)
        .map(|p| Vec::<f64>::try_from(&out.get(0).get(p).to_kind(Kind::Double)).unwrap())
        .collect()
}

#[test]
fn recipe_prune_hands_a_folder_to_transformers_and_reproduces_the_library() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("wanda50");
    let svg = tmp.path().join("layers.svg");
    // 150 MB shards: the 0.54 GB model comes out in four, with an index.
    let (so, se) = ok(birdbone()
        .args(["prune", "--json", "--recipe"])
        .arg(recipe("wanda-50.yaml"))
        .arg("--model")
        .arg(real_model_dir())
        .args([
            "--calibration-windows",
            "4",
            "--device",
            "cpu",
            "--max-shard-size",
            "150MB",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--plot")
        .arg(&svg));
    assert!(
        se.contains("calibration: 4 windows in"),
        "no progress line for calibration:\n{se}"
    );
    let v = snapshot("prune", &so);
    assert_eq!(v["report"]["sparsity"].as_f64(), Some(0.5));
    assert_eq!(v["calibration"]["windows"].as_u64(), Some(4));
    assert_eq!(v["recipe"]["scorer"]["name"], "wanda");
    assert_eq!(v["sharded"], true);

    // The folder: shards with an index, tokenizer, provenance, recipe, report, masks.
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shards: std::collections::BTreeSet<&str> = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(shards.len(), 4, "{shards:?}");
    for s in &shards {
        assert!(std::fs::metadata(out.join(s)).unwrap().len() <= 150_000_000);
    }
    for f in [
        "config.json",
        "tokenizer.json",
        "recipe.yaml",
        "birdbone.json",
        "report.json",
        "masks.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let prov: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("birdbone.json")).unwrap()).unwrap();
    assert_eq!(prov["plugins"][0]["component"], "wanda");
    assert!(prov["plugins"][0]["version"].is_string());
    let written = birdbone_host::Recipe::from_file(&out.join("recipe.yaml")).unwrap();
    assert_eq!(
        written.calibration.unwrap().windows,
        4,
        "the effective recipe is recorded, flags applied"
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["layers"].as_array().unwrap().len(), 30 * 7);

    // Plain transformers loads the folder; its logits equal Birdbone's on the same weights.
    let m = Loaded::load(real_model_dir().to_str().unwrap(), Device::Cpu, Kind::Float).unwrap();
    let ids = m
        .encode("Birdbone prunes a live model in place, one layer at a time.")
        .unwrap();
    let py = Command::new(python())
        .arg(workspace_root().join("scripts/transformers_logits.py"))
        .arg(&out)
        .arg(serde_json::to_string(&ids).unwrap())
        .output()
        .unwrap();
    assert!(
        py.status.success(),
        "transformers failed: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let t: Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(t["declared_dtype"], "torch.float32");
    let pruned = v["report"]["pruned"].as_u64().unwrap();
    assert_eq!(
        t["zero_proj_weights"].as_u64().unwrap(),
        pruned,
        "transformers sees the pruned zeros"
    );
    let theirs: Vec<Vec<f64>> = serde_json::from_value(t["logits"].clone()).unwrap();
    let ours = logits_of(&out, &ids);
    let worst = ours
        .iter()
        .flatten()
        .zip(theirs.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f64, f64::max);
    assert!(
        worst < 2e-3,
        "largest logit difference against transformers {worst}"
    );

    // `prune` then `eval` gives the perplexity the library gives for the same steps (the demo's).
    let eval = |dir: &Path| {
        let (so, _) = ok(birdbone()
            .args([
                "eval",
                "--json",
                "--windows",
                "4",
                "--device",
                "cpu",
                "--model",
            ])
            .arg(dir));
        so
    };
    let e = snapshot("eval", &eval(&out));
    let cli_ppl = e["perplexity"].as_f64().unwrap();
    let calib_text = std::fs::read_to_string(real_text("c4.utf8")).unwrap();
    let calib = token_windows(&m.tokenizer, &calib_text, 512, 4).unwrap();
    let (sums, _) = birdbone_llama::collect_stats(&m.model, &calib, 4).unwrap();
    let stats = birdbone_tch::ActivationStats::from(sums);
    let st = [("scope".to_string(), "row".to_string())].into();
    let mut pruner = Pruner::new(
        &builtin_registry(),
        "wanda",
        &Default::default(),
        "layerwise",
        &st,
    )
    .unwrap();
    pruner
        .run(
            m.model.var_store(),
            &PassConfig::default(),
            PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )
        .unwrap();
    let wiki = std::fs::read_to_string(real_text("wiki.utf8")).unwrap();
    let lib_ppl = perplexity(
        &m.model,
        &token_windows(&m.tokenizer, &wiki, 512, 4).unwrap(),
        4,
    )
    .unwrap()
    .ppl;
    assert_eq!(
        format!("{cli_ppl:.4}"),
        format!("{lib_ppl:.4}"),
        "prune + eval against the library"
    );

    // The per-layer picture parses and holds one line per matrix type.
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    let doc = roxmltree::Document::parse(&svg_text).expect("the SVG parses");
    let texts: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for kind in [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ] {
        assert!(texts.contains(&kind), "legend lacks {kind}");
    }
    assert!(
        texts.iter().any(|t| t.contains("Sparsity per layer")),
        "no title"
    );
    assert!(
        texts.iter().any(|t| t.contains("layer (block index)")),
        "no x axis description"
    );
    let lines = doc
        .descendants()
        .filter(|n| n.has_tag_name("polyline"))
        .count();
    assert!(lines >= 7, "{lines} polylines for 7 series");

    // apply-masks: the saved masks on the dense model, written in bf16.
    let again = tmp.path().join("again");
    let (so, _) = ok(birdbone()
        .args(["apply-masks", "--json", "--dtype", "bf16", "--model"])
        .arg(real_model_dir())
        .arg("--masks")
        .arg(out.join("masks.safetensors"))
        .arg("--out")
        .arg(&again));
    let am = snapshot("apply-masks", &so);
    assert_eq!(am["pruned"].as_u64(), Some(pruned));
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(again.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["torch_dtype"], "bfloat16",
        "config.json follows --dtype"
    );
    let header = checkpoint::read_header(&again).unwrap();
    assert!(header.iter().all(|e| e.dtype == "BF16"));
    let a = checkpoint::load_dir(&out, Some(Kind::BFloat16), Device::Cpu).unwrap();
    let b = checkpoint::load_dir(&again, None, Device::Cpu).unwrap();
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(
            ta.equal(tb) || !na.ends_with("proj.weight"),
            "{na} differs after apply-masks"
        );
    }
}

#[test]
fn png_pictures_and_the_study_json() {
    let tmp = tempfile::tempdir().unwrap();
    let png = tmp.path().join("layers.png");
    let (_, quiet) = ok(birdbone()
        .args(["prune", "--quiet", "--device", "cpu", "--model"])
        .arg(real_model_dir())
        .arg("--out")
        .arg(tmp.path().join("m"))
        .arg("--plot")
        .arg(&png));
    assert!(quiet.is_empty(), "--quiet printed:\n{quiet}");
    // A non-empty --out is refused without --overwrite; with it, the new folder replaces the
    // old one whole (nothing stale survives).
    let out = tmp.path().join("m");
    std::fs::write(out.join("model.safetensors.index.json"), "{}").unwrap();
    let err = fails(
        birdbone()
            .args(["prune", "--model"])
            .arg(real_model_dir())
            .arg("--out")
            .arg(&out),
    );
    assert!(err.contains("--overwrite"), "{err}");
    ok(birdbone()
        .args([
            "prune",
            "-q",
            "--overwrite",
            "--device",
            "cpu",
            "--sparsity",
            "0.3",
            "--model",
        ])
        .arg(real_model_dir())
        .arg("--out")
        .arg(&out));
    assert!(
        !out.join("model.safetensors.index.json").exists(),
        "a stale index survived"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["target_sparsity"].as_f64(), Some(0.3));
    let siblings: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        siblings.iter().all(|n| !n.contains("birdbone-")),
        "staging left behind: {siblings:?}"
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (960, 600));
    let px = &buf[..info.buffer_size()];
    let count = |rgb: [u8; 3]| {
        px.chunks(info.line_size / info.width as usize)
            .filter(|p| p[..3] == rgb)
            .count()
    };
    // Seven matrix types: the first seven line colours are each drawn.
    for rgb in [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
    ] {
        assert!(
            count(rgb) > 50,
            "colour {rgb:?} drawn on {} pixels",
            count(rgb)
        );
    }

    // The study on a small protocol: JSON rows, and a log-scale plot per method.
    let dir = tmp.path().join("study");
    let (so, se) = ok(birdbone()
        .args([
            "study",
            "--json",
            "--device",
            "cpu",
            "--windows",
            "1",
            "--window",
            "128",
            "--calibration-windows",
            "1",
            "--calibration-length",
            "128",
            "--model",
        ])
        .arg(real_model_dir())
        .arg("--plot")
        .arg(&dir));
    assert!(
        se.contains("study: 11 settings in"),
        "no progress line:\n{se}"
    );
    let v = snapshot("study", &so);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 11);
    assert!(rows
        .iter()
        .all(|r| r["perplexity"].as_f64().unwrap().is_finite()));
    let svg = std::fs::read_to_string(dir.join("perplexity.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc
        .descendants()
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    for s in [
        "magnitude (unstructured)",
        "wanda (unstructured)",
        "magnitude (2:4, 4:8)",
        "wanda (2:4, 4:8)",
        "perplexity (log scale)",
    ] {
        assert!(texts.contains(&s), "the study plot lacks '{s}'");
    }
    assert!(dir.join("perplexity.png").metadata().unwrap().len() > 10_000);
}

/// A hub cache as huggingface_hub lays it out: refs name commits, snapshots hold files.
fn fake_hub(root: &Path) {
    let repo = root.join("models--acme--smol");
    for (rev, commit) in [("main", "1111aaaa"), ("v1", "2222bbbb")] {
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join(rev), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::os::unix::fs::symlink(real_model_dir().join(f), snap.join(f)).unwrap();
        }
    }
}

#[test]
fn hub_ids_resolve_in_the_local_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let hub = tmp.path().join("hub");
    fake_hub(&hub);
    let source = |model: &str, env: (&str, &Path)| {
        let (so, _) = ok(birdbone()
            .args(["prune", "--dry-run", "--json", "--model", model])
            .env_remove("HF_HUB_CACHE")
            .env_remove("HF_HOME")
            .env(env.0, env.1));
        snapshot("prune-dry-run", &so)["source"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(source("acme/smol", ("HF_HUB_CACHE", &hub)).ends_with("snapshots/1111aaaa"));
    assert!(source("acme/smol@v1", ("HF_HUB_CACHE", &hub)).ends_with("snapshots/2222bbbb"));
    assert!(source("acme/smol@2222bbbb", ("HF_HUB_CACHE", &hub)).ends_with("snapshots/2222bbbb"));
    // HF_HOME/hub when HF_HUB_CACHE is not set.
    assert!(source("acme/smol", ("HF_HOME", tmp.path())).ends_with("snapshots/1111aaaa"));
    // A model is evaluated from the cache as from a folder.
    let (so, _) = ok(birdbone()
        .args([
            "eval",
            "--json",
            "--windows",
            "1",
            "--window",
            "64",
            "--device",
            "cpu",
            "--model",
            "acme/smol@v1",
        ])
        .env("HF_HUB_CACHE", &hub));
    let e: Value = serde_json::from_str(&so).unwrap();
    assert!(e["perplexity"].as_f64().unwrap() > 1.0);
    let err = fails(
        birdbone()
            .args(["prune", "--dry-run", "--model", "acme/smol@v9"])
            .env("HF_HUB_CACHE", &hub),
    );
    assert!(
        err.contains("v9") && err.contains("\"v1\""),
        "the error names the cached revisions:\n{err}"
    );
}

#[test]
fn bad_input_is_refused_before_loading_and_named_once() {
    let model = real_model_dir();
    let prune = |args: &[&str]| {
        let mut c = birdbone();
        c.args(["prune", "--out", "/nonexistent/never-written", "--model"])
            .arg(&model)
            .args(args);
        let started = std::time::Instant::now();
        let err = fails(&mut c);
        // Nothing was loaded: the model takes seconds; these fail in milliseconds.
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{args:?} was refused only after {:?}",
            started.elapsed()
        );
        err
    };
    assert!(prune(&["--sparsity", "2"]).contains("between 0 and 1"));
    assert!(prune(&["--device", "gpu"]).contains("gpu"));
    assert!(prune(&["--dtype", "f8"]).contains("f8"));
    assert!(prune(&["--pattern", "5:4"]).contains("5:4"));
    assert!(prune(&["--pattern", "2:4"]).contains("strategy 'global' does not produce it"));
    assert!(
        prune(&["--strategy", "nm", "--pattern", "2:4", "--param", "m=8"]).contains("give one")
    );
    assert!(prune(&["--calibration-windows", "4"]).contains("uses calibration statistics"));
    assert!(
        prune(&["--scorer", "wanda", "--calibration-mode", "sequential"])
            .contains("'global' strategy would rank within a block")
    );
    assert!(prune(&["--scorer", "nosuch"]).contains("nosuch"));
    assert!(prune(&["--param", "zap=1"]).contains("zap"));
    assert!(prune(&["--plot", "x.jpg"]).contains(".svg or .png"));
    assert!(prune(&["--include", "re:("]).contains("re:("));
    assert!(prune(&["--include", "nothing.*"]).contains("selects no parameter"));

    // A missing recipe file: named, its cause said once.
    let err = prune(&["--recipe", "/nonexistent/r.yaml"]);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
    // An unknown recipe field is named.
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path().join("r.yaml");
    std::fs::write(&r, "scorer: wanda\nsparsty: 0.5\n").unwrap();
    assert!(prune(&["--recipe", r.to_str().unwrap()]).contains("sparsty"));
    let err = fails(
        birdbone()
            .args(["prune", "--dry-run", "--plot", "x.png", "--model"])
            .arg(&model),
    );
    assert!(err.contains("--dry-run"), "{err}");
    assert!(prune(&[
        "--scorer",
        "wanda",
        "--strategy",
        "layerwise",
        "--calibration-mode",
        "sequential",
        "--include",
        "*proj.weight",
        "--include",
        "model.embed_tokens.weight"
    ])
    .contains("outside them"));
    let err = fails(
        birdbone()
            .args(["prune", "--model"])
            .arg(&model)
            .args(["--out", "."]),
    );
    assert!(err.contains("not `.`"), "{err}");
    // --out may not be the model folder, inside it or around it.
    for out in [
        model.clone(),
        model.join("pruned"),
        model.parent().unwrap().to_path_buf(),
    ] {
        let err = fails(
            birdbone()
                .args(["prune", "--model"])
                .arg(&model)
                .arg("--out")
                .arg(&out),
        );
        assert!(err.contains("inside it or around it"), "{err}");
    }
    // No output folder is an error, unless it is a dry run.
    let err = fails(birdbone().args(["prune", "--model"]).arg(&model));
    assert!(err.contains("--out"), "{err}");

    // No plugin anywhere: the folders searched are named.
    let empty = tempfile::tempdir().unwrap();
    let err = fails(
        Command::new(build_dir().join("birdbone"))
            .args(["prune", "--out", "x", "--model"])
            .arg(&model)
            .arg("--plugins")
            .arg(empty.path()),
    );
    assert!(
        err.contains("no plugin loaded") && err.contains(&*empty.path().to_string_lossy()),
        "{err}"
    );
}

#[test]
fn plugins_json_and_a_closed_stdout() {
    // A file that is refused, so the shape of `rejected` is checked too.
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("garbage.so"), b"not a plugin").unwrap();
    // Two versions of one component: the newer is listed, the older shown as superseded.
    for v in ["v1", "v2"] {
        let name = format!("birdbone_fixture_plugin_versioned_{v}");
        std::fs::copy(
            plugin_file(&name),
            extra.path().join(format!("lib{name}.so")),
        )
        .unwrap();
    }
    let (so, _) = ok(birdbone()
        .env("BIRDBONE_PLUGIN_PATH", extra.path())
        .args(["plugins", "--json"]));
    let v = snapshot("plugins", &so);
    let comps = v["components"].as_array().unwrap();
    assert!(comps.iter().any(|c| c["name"] == "wanda"));
    let versioned: Vec<_> = comps
        .iter()
        .filter(|c| c["name"] == "versioned-nm")
        .collect();
    assert_eq!(versioned.len(), 1, "{so}");
    assert_eq!(versioned[0]["plugin_version"], "2.0.0");
    let sup = v["superseded"].as_array().unwrap();
    assert_eq!(sup.len(), 1, "{so}");
    assert_eq!(sup[0]["component"], "versioned-nm");
    assert_eq!(sup[0]["from_version"], "1.0.0");
    let (so, _) = ok(birdbone()
        .env("BIRDBONE_PLUGIN_PATH", extra.path())
        .args(["plugins"]));
    assert!(
        so.contains("superseded:\n  versioned-nm 1.0.0 from "),
        "{so}"
    );
    // `birdbone plugins --json | head -c 1`: the pipe closes early; no panic, no noise.
    let mut child = birdbone()
        .args(["plugins"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let se = String::from_utf8_lossy(&out.stderr);
    assert!(
        !se.contains("panicked") && !se.contains("Broken pipe"),
        "{se}"
    );
}

#[test]
fn llm_compressor_and_sequential_recipes_through_prune() {
    let (so, _) = ok(birdbone()
        .args(["prune", "--dry-run", "--json", "--recipe"])
        .arg(recipe("llm-compressor-wanda-50.yaml"))
        .arg("--model")
        .arg(real_model_dir()));
    let v: Value = serde_json::from_str(&so).unwrap();
    assert_eq!(v["recipe"]["strategy"]["params"]["scope"], "row");
    assert_eq!(
        v["params"].as_array().unwrap().len(),
        30 * 7,
        "the Linear weights of the layers"
    );

    let tmp = tempfile::tempdir().unwrap();
    let (so, se) = ok(birdbone()
        .args([
            "prune",
            "--json",
            "--scorer",
            "wanda",
            "--strategy",
            "layerwise",
            "--calibration-mode",
            "sequential",
            "--calibration-windows",
            "2",
            "--device",
            "cpu",
            "--model",
        ])
        .arg(real_model_dir())
        .arg("--out")
        .arg(tmp.path().join("seq")));
    assert!(
        se.contains("sequential: 30 blocks in"),
        "no progress line for the blocks:\n{se}"
    );
    let v: Value = serde_json::from_str(&so).unwrap();
    let params = v["report"]["params"].as_array().unwrap();
    assert_eq!(params.len(), 210);
    assert!(params
        .iter()
        .all(|p| (p["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-3));
}

/// `import-gguf` writes its folder whole or not at all: a non-empty folder needs --overwrite, a
/// failed import leaves the old folder as it was (and no staging folder), and a folder holding
/// the GGUF file is refused before anything is read.
#[test]
fn import_gguf_replaces_a_folder_only_when_the_new_one_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "old").unwrap();
    let err = fails(birdbone().arg("import-gguf").arg(real_gguf()).arg(&out));
    assert!(err.contains("--overwrite"), "{err}");

    let bytes = std::fs::read(real_gguf()).unwrap();
    let cut = tmp.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(
        birdbone()
            .args(["import-gguf", "--overwrite"])
            .arg(&cut)
            .arg(&out),
    );
    assert!(err.contains("truncated"), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "old"
    );
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| !n.contains("partial")),
        "a staging folder was left: {names:?}"
    );

    // The folder that holds the file cannot be the output.
    let err = fails(
        birdbone()
            .args(["import-gguf", "--overwrite"])
            .arg(&cut)
            .arg(tmp.path()),
    );
    assert!(err.contains("inside it or around it"), "{err}");
    assert!(cut.exists());
}
