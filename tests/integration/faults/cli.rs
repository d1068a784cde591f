//! Bad parameters on the command line, and output folders that must not be written (or must
//! be replaced whole).

use std::path::Path;

use super::{
    birdbone, leftovers, refused, short_eval, snapshot, succeeds, untouched, Case, Failure,
};

pub fn cases(root: &Path, model: &Path) -> Vec<Case> {
    let mut out = vec![];
    let m = model.to_string_lossy().into_owned();
    let params: Vec<(&str, Vec<&str>, &'static str)> = vec![
        ("eval --window 0", vec!["eval", "--window", "0"], "--window"),
        (
            "eval --window 1 (no next token to predict)",
            vec!["eval", "--window", "1"],
            "--window",
        ),
        (
            "eval --windows 0",
            vec!["eval", "--windows", "0"],
            "--windows",
        ),
        ("eval --batch 0", vec!["eval", "--batch", "0"], "--batch"),
        (
            "eval --text on a missing file",
            vec!["eval", "--text", "/nonexistent/text.txt"],
            "/nonexistent/text.txt",
        ),
        (
            "eval --device cuda:7 (no such device)",
            vec!["eval", "--device", "cuda:7"],
            "cuda",
        ),
        ("eval --device tpu", vec!["eval", "--device", "tpu"], "tpu"),
        ("eval --dtype f8", vec!["eval", "--dtype", "f8"], "f8"),
        (
            "generate --prompt \"\"",
            vec!["generate", "--prompt", ""],
            "prompt is empty",
        ),
        (
            "prune --sparsity 1.5",
            vec!["prune", "--sparsity", "1.5", "--dry-run"],
            "sparsity",
        ),
        (
            "prune --sparsity -0.1",
            vec!["prune", "--sparsity=-0.1", "--dry-run"],
            "sparsity",
        ),
        (
            "prune --sparsity NaN",
            vec!["prune", "--sparsity", "NaN", "--dry-run"],
            "sparsity",
        ),
        (
            "prune --pattern 0:4",
            vec!["prune", "--pattern", "0:4", "--dry-run"],
            "0:4",
        ),
        (
            "prune --pattern 2-4",
            vec!["prune", "--pattern", "2-4", "--dry-run"],
            "2-4",
        ),
        (
            "prune --scorer that no plugin offers",
            vec!["prune", "--scorer", "nosuch", "--dry-run"],
            "nosuch",
        ),
        (
            "prune --strategy that no plugin offers",
            vec!["prune", "--strategy", "nosuch", "--dry-run"],
            "nosuch",
        ),
        (
            "prune --param without =",
            vec!["prune", "--param", "alpha", "--dry-run"],
            "alpha",
        ),
        (
            "prune --param the component does not take",
            vec![
                "prune",
                "--scorer",
                "magnitude",
                "--param",
                "nosuch=1",
                "--dry-run",
            ],
            "nosuch",
        ),
        (
            "prune --include matching nothing",
            vec!["prune", "--include", "no.such.*", "--dry-run"],
            "no.such",
        ),
        (
            "prune --max-shard-size 0",
            vec!["prune", "--max-shard-size", "0", "--out", "x"],
            "max-shard-size",
        ),
        (
            "prune --calibration-windows 0",
            vec![
                "prune",
                "--scorer",
                "wanda",
                "--calibration-windows",
                "0",
                "--dry-run",
            ],
            "calibration",
        ),
        (
            "prune without --out",
            vec!["prune", "--sparsity", "0.5"],
            "--out",
        ),
    ];
    for (what, args, needle) in params {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.insert(1, "--quiet".into());
        a.extend(["--model".to_string(), m.clone()]);
        let model = model.to_path_buf();
        out.push(Case::new(
            "parameters",
            what,
            "exit 1 before any work, naming the flag; the model unchanged",
            move || untouched(&[&model], || refused(birdbone().args(&a), needle)),
        ));
    }
    out.push(Case::new(
        "parameters",
        "--model that does not exist",
        "exit 1, naming it",
        || {
            refused(
                birdbone().args(["eval", "--quiet", "--model", "/nonexistent/model"]),
                "/nonexistent/model",
            )
        },
    ));
    out.push(Case::new(
        "parameters",
        "--model org/name@rev not in the cache",
        "exit 1, naming it",
        || {
            refused(
                birdbone().env("HF_HUB_CACHE", "/nonexistent").args([
                    "eval",
                    "--quiet",
                    "--model",
                    "org/name@main",
                ]),
                "org/name",
            )
        },
    ));

    // Output folders.
    let prune = |out_dir: &Path| {
        let mut c = birdbone();
        c.args([
            "prune",
            "--quiet",
            "--scorer",
            "magnitude",
            "--strategy",
            "global",
            "--sparsity",
            "0.5",
            "--model",
        ])
        .arg(model)
        .arg("--out")
        .arg(out_dir);
        c
    };
    let o = "outputs";
    for (what, target) in [
        ("--out equal to --model", model.to_path_buf()),
        ("--out inside --model", model.join("pruned")),
        (
            "--out around --model",
            model.parent().unwrap().to_path_buf(),
        ),
    ] {
        let mut cmd = prune(&target);
        let model = model.to_path_buf();
        out.push(Case::new(
            o,
            what,
            "exit 1 before any work; the model unchanged",
            move || untouched(&[&model], || refused(&mut cmd, "inside it or around it")),
        ));
    }
    let occupied = root.join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("notes.txt"), "mine").unwrap();
    let mut cmd = prune(&occupied);
    let dir = occupied.clone();
    out.push(Case::new(
        o,
        "a non-empty --out without --overwrite",
        "exit 1; the folder unchanged",
        move || untouched(&[&dir], || refused(&mut cmd, "--overwrite")),
    ));
    let file = root.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut cmd = prune(&file);
    cmd.arg("--overwrite");
    out.push(Case::new(
        o,
        "--out naming a file",
        "exit 1; the file unchanged",
        move || {
            let r = refused(&mut cmd, "not a folder")?;
            match std::fs::read_to_string(&file) {
                Ok(s) if s == "x" => Ok(r),
                _ => Err((Failure::DataLoss, "the file changed".into())),
            }
        },
    ));
    let stale = root.join("stale");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(
        stale.join("model.safetensors.index.json"),
        r#"{"weight_map": {"x": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(stale.join("model-00001-of-00002.safetensors"), "old").unwrap();
    let mut cmd = prune(&stale);
    cmd.arg("--overwrite");
    out.push(Case::new(
        o,
        "--overwrite over an earlier sharded output (a stale index)",
        "succeeds; nothing of the old folder survives, the new one loads",
        move || {
            succeeds(&mut cmd)?;
            let files: Vec<String> = snapshot(&stale).into_keys().collect();
            if files
                .iter()
                .any(|f| f.contains("index") || f.contains("00001"))
            {
                return Err((Failure::Silent, format!("stale files survive: {files:?}")));
            }
            succeeds(&mut short_eval(&stale))?;
            if !leftovers(&stale).is_empty() {
                return Err((Failure::Silent, "a staging folder was left".into()));
            }
            Ok("replaced whole; the new folder evaluates".into())
        },
    ));
    let no_config = root.join("no-config-model");
    super::copy_dir(model, &no_config);
    std::fs::remove_file(no_config.join("config.json")).unwrap();
    let target = root.join("from-no-config");
    let mut cmd = birdbone();
    cmd.args([
        "prune",
        "--quiet",
        "--scorer",
        "magnitude",
        "--strategy",
        "global",
        "--sparsity",
        "0.5",
        "--model",
    ])
    .arg(&no_config)
    .arg("--out")
    .arg(&target);
    out.push(Case::new(
        o,
        "a model folder without config.json",
        "exit 1; no output folder written",
        move || {
            let r = refused(&mut cmd, "config.json")?;
            if target.exists() {
                return Err((Failure::Silent, "an output folder was written".into()));
            }
            Ok(r)
        },
    ));
    out
}
