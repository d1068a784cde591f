//! The fault suite: every input hostile, every write atomic. Each case feeds one bad file,
//! config, parameter, output folder, signal or full disk to Birdbone the way a careless
//! operator or an attacker would, and checks the one correct outcome: a clear error that names
//! the problem (exit 1, no panic, within a time limit), with the model and any earlier output
//! left exactly as they were; or, where the input is fine, a correct result.
//!
//! `docs/fault-suite.md` is generated from these cases (`BIRDBONE_BLESS=1`); the test fails
//! when it is stale, so the report's figures are the suite's.

mod cli;
mod files;
mod gguf;
mod signals;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use birdbone_tests::*;

/// What went wrong in a case, by the report's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// A panic, an abort or a signal.
    Crash,
    /// Past the time limit.
    Hang,
    /// A model or an earlier output changed or went missing.
    DataLoss,
    /// Exit 0 (or a result) where an error was due, or an error that does not name the problem.
    Silent,
}

/// One case: its category, what it feeds, how its outcome is checked, and the check.
pub struct Case {
    pub category: &'static str,
    pub name: String,
    pub checked: &'static str,
    pub run: Box<dyn FnOnce() -> Result<String, (Failure, String)>>,
}

impl Case {
    pub fn new(
        category: &'static str,
        name: impl Into<String>,
        checked: &'static str,
        run: impl FnOnce() -> Result<String, (Failure, String)> + 'static,
    ) -> Case {
        Case {
            category,
            name: name.into(),
            checked,
            run: Box::new(run),
        }
    }
}

pub const TIME_LIMIT: Duration = Duration::from_secs(120);

/// The `birdbone` command, as a user runs it (plugins beside it).
pub fn birdbone() -> Command {
    Command::new(build_dir().join("birdbone"))
}

/// `birdbone eval` on `model` at its shortest (one 16-token window, CPU): enough to load and
/// run every part of a model folder.
pub fn short_eval(model: &Path) -> Command {
    let mut c = birdbone();
    c.args([
        "eval",
        "--quiet",
        "--device",
        "cpu",
        "--windows",
        "1",
        "--window",
        "16",
        "--model",
    ])
    .arg(model);
    c
}

/// How a command ended.
pub struct Ran {
    pub code: Option<i32>,
    pub stderr: String,
    pub stdout: String,
}

/// Runs `cmd` under the time limit.
pub fn run(cmd: &mut Command) -> Result<Ran, (Failure, String)> {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| (Failure::Crash, format!("cannot start: {e}")))?;
    let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err((Failure::Hang, format!("{cmd:?} ran past {TIME_LIMIT:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    })
}

/// A command that must be refused: exit 1 (2 for a flag the parser rejects), no panic, an
/// error naming `needle`.
pub fn refused(cmd: &mut Command, needle: &str) -> Result<String, (Failure, String)> {
    let r = run(cmd)?;
    if r.code.is_none() || r.stderr.contains("panicked") {
        return Err((Failure::Crash, format!("{cmd:?}:\n{}", r.stderr)));
    }
    if r.code == Some(0) {
        return Err((Failure::Silent, format!("{cmd:?} succeeded:\n{}", r.stdout)));
    }
    if !r.stderr.contains(needle) || !matches!(r.code, Some(1 | 2)) {
        return Err((
            Failure::Silent,
            format!(
                "{cmd:?} exit {:?} without naming {needle:?}:\n{}",
                r.code, r.stderr
            ),
        ));
    }
    Ok(format!("refused, names `{needle}`"))
}

/// A command that must succeed.
pub fn succeeds(cmd: &mut Command) -> Result<Ran, (Failure, String)> {
    let r = run(cmd)?;
    if r.code != Some(0) {
        let f = if r.code.is_none() || r.stderr.contains("panicked") {
            Failure::Crash
        } else {
            Failure::Silent
        };
        return Err((f, format!("{cmd:?} exit {:?}:\n{}", r.code, r.stderr)));
    }
    Ok(r)
}

/// Every file under `dir` (names relative to it) with its bytes' hash: what "left exactly as it
/// was" is checked against.
pub fn snapshot(dir: &Path) -> BTreeMap<String, u64> {
    use std::hash::{Hash, Hasher};
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap_or_default().hash(&mut h);
                out.insert(
                    p.strip_prefix(dir).unwrap().to_string_lossy().into_owned(),
                    h.finish(),
                );
            }
        }
    }
    out
}

/// Runs `f`, then checks `dirs` are exactly as they were.
pub fn untouched(
    dirs: &[&Path],
    f: impl FnOnce() -> Result<String, (Failure, String)>,
) -> Result<String, (Failure, String)> {
    let before: Vec<_> = dirs.iter().map(|d| snapshot(d)).collect();
    let r = f()?;
    for (d, b) in dirs.iter().zip(before) {
        if snapshot(d) != b {
            return Err((Failure::DataLoss, format!("{} changed", d.display())));
        }
    }
    Ok(r)
}

/// Names beside `dir` that a staging folder would have (`.<name>.birdbone-partial-*`).
pub fn leftovers(dir: &Path) -> Vec<String> {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}.birdbone-partial")))
        .collect()
}

/// A small model folder the CLI cases run on: SmolLM2's tokenizer over a two-layer random
/// model of its vocabulary (loads in well under a second).
pub fn tiny_model(dir: &Path) -> PathBuf {
    use birdbone_llama::{checkpoint, Llama, LlamaConfig};
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 49152, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "float32",
        "max_position_embeddings": 2048,
    });
    let m = dir.join("tiny");
    std::fs::create_dir_all(&m).unwrap();
    let c = LlamaConfig::from_json(&config).unwrap();
    let model = Llama::random(c, tch::Device::Cpu, tch::Kind::Float, 0.05).unwrap();
    let mut tensors: Vec<(String, tch::Tensor)> =
        model.var_store().variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    checkpoint::save_model(&tensors, &m, u64::MAX).unwrap();
    std::fs::write(
        m.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        real_model_dir().join("tokenizer.json"),
        m.join("tokenizer.json"),
    )
    .unwrap();
    m
}

/// A copy of the folder `src` at `dst`.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
}

/// A case run: category, name, how checked, outcome.
type Row = (
    &'static str,
    String,
    &'static str,
    Result<String, (Failure, String)>,
);

fn report(results: &[Row]) -> String {
    let mut by_cat: BTreeMap<&str, [usize; 5]> = BTreeMap::new();
    for (cat, _, _, r) in results {
        let row = by_cat.entry(cat).or_default();
        row[0] += 1;
        if let Err((f, _)) = r {
            row[1 + *f as usize] += 1;
        }
    }
    let mut s = String::from(
        "# Fault suite\n\n\
         Every case feeds one hostile or careless input to Birdbone and checks the one correct \
         outcome: a clear error naming the problem (exit 1, no panic, under two minutes) with the \
         model and any earlier output left byte for byte as they were, or, where the input is \
         fine, a correct result. The cases are `tests/integration/faults/`; this file is written \
         by them (`BIRDBONE_BLESS=1 cargo test -p birdbone-tests --test integration faults`) and \
         the test fails when it is stale. CI runs the whole suite.\n\n\
         | category | cases | crashes | hangs | data loss | silent wrong results |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let mut total = [0usize; 5];
    for (cat, row) in &by_cat {
        s += &format!(
            "| {cat} | {} | {} | {} | {} | {} |\n",
            row[0], row[1], row[2], row[3], row[4]
        );
        for i in 0..5 {
            total[i] += row[i];
        }
    }
    s += &format!(
        "| **all** | **{}** | **{}** | **{}** | **{}** | **{}** |\n\n",
        total[0], total[1], total[2], total[3], total[4]
    );
    s += "Fuzzing (cargo-fuzz, one target per parser) is described in \
          [fuzzing.md](fuzzing.md) with its last results.\n\n\
          ## Cases\n\n| # | category | case | checked by | outcome |\n| ---: | --- | --- | --- | --- |\n";
    for (i, (cat, name, checked, r)) in results.iter().enumerate() {
        let outcome = match r {
            Ok(o) => o.clone(),
            Err((f, _)) => format!("**{f:?}**"),
        };
        s += &format!(
            "| {} | {cat} | {} | {checked} | {} |\n",
            i + 1,
            name.replace('|', "\\|"),
            outcome.replace('|', "\\|")
        );
    }
    s
}

#[test]
fn fault_suite() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let mut cases = vec![];
    cases.extend(gguf::cases());
    cases.extend(files::cases(tmp.path(), &model));
    cases.extend(cli::cases(tmp.path(), &model));
    cases.extend(signals::cases(tmp.path(), &model));
    let mut results = vec![];
    for c in cases {
        let r = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(c.run)) {
            Ok(r) => r,
            Err(_) => Err((Failure::Crash, "the case panicked in process".into())),
        };
        if let Err((f, why)) = &r {
            eprintln!("FAIL {} / {}: {f:?}: {why}", c.category, c.name);
        }
        results.push((c.category, c.name, c.checked, r));
    }
    let failed = results.iter().filter(|r| r.3.is_err()).count();
    let text = report(&results);
    let path = workspace_root().join("docs/fault-suite.md");
    if std::env::var_os("BIRDBONE_BLESS").is_some() {
        std::fs::write(&path, &text).unwrap();
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} fault cases failed",
        results.len()
    );
    assert!(results.len() >= 100, "{} cases", results.len());
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == text,
        "docs/fault-suite.md is stale: run with BIRDBONE_BLESS=1"
    );
}
