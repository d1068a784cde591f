//! Signals during a write and a full disk: an earlier output survives whole, or is replaced
//! whole; nothing partial is ever in its place, and a later run clears what a killed one left.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use birdbone_tests::*;

use super::{birdbone, leftovers, refused, run, snapshot, succeeds, untouched, Case, Failure};

fn prune(model: &Path, out: &Path, sparsity: &str) -> Command {
    let mut c = birdbone();
    c.args([
        "prune",
        "--quiet",
        "--overwrite",
        "--scorer",
        "magnitude",
        "--strategy",
        "global",
        "--sparsity",
        sparsity,
        "--model",
    ])
    .arg(model)
    .arg("--out")
    .arg(out);
    c
}

/// `cmd` with writes limited to `bytes` per file, as a full disk would stop them. With
/// `ignore`, the write fails with EFBIG; without, SIGXFSZ kills the process mid-write.
fn limited(mut cmd: Command, bytes: u64, ignore: bool) -> Command {
    // SAFETY: between fork and exec only async-signal-safe calls (setrlimit, signal).
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if ignore {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            }
            Ok(())
        });
    }
    cmd
}

/// The output folder is the earlier one byte for byte, or a complete new one.
fn whole(
    out: &Path,
    before: &std::collections::BTreeMap<String, u64>,
) -> Result<&'static str, (Failure, String)> {
    let now = snapshot(out);
    if &now == before {
        return Ok("earlier output intact");
    }
    let complete = [
        "config.json",
        "model.safetensors",
        "birdbone.json",
        "report.json",
        "masks.safetensors",
    ]
    .iter()
    .all(|f| now.contains_key(*f))
        && now.len() == before.len();
    if complete && birdbone_llama::checkpoint::read_header(out).is_ok() {
        return Ok("replaced whole");
    }
    Err((
        Failure::DataLoss,
        format!("partial output: {:?}", now.keys().collect::<Vec<_>>()),
    ))
}

pub fn cases(root: &Path, model: &Path) -> Vec<Case> {
    let mut out = vec![];
    let target: PathBuf = root.join("signalled");
    let model = model.to_path_buf();
    let (m, t) = (model.clone(), target.clone());
    let setup = move || -> Result<(), (Failure, String)> {
        if !t.join("config.json").exists() {
            succeeds(&mut prune(&m, &t, "0.5"))?;
        }
        Ok(())
    };
    // Each signal lands a set time after the staging folder appears, so inside the write
    // whatever the machine's speed.
    let kills: Vec<(libc::c_int, &str, u64)> = vec![
        (libc::SIGTERM, "SIGTERM", 0),
        (libc::SIGTERM, "SIGTERM", 10),
        (libc::SIGTERM, "SIGTERM", 40),
        (libc::SIGINT, "SIGINT", 20),
        (libc::SIGKILL, "SIGKILL", 0),
        (libc::SIGKILL, "SIGKILL", 5),
        (libc::SIGKILL, "SIGKILL", 30),
    ];
    for (sig, name, ms) in kills {
        let (m, t, setup) = (model.clone(), target.clone(), setup.clone());
        out.push(Case::new(
            "signals",
            format!("{name} {ms} ms into the write of prune --overwrite over an earlier output"),
            "the folder is the earlier one byte for byte, or a complete new one",
            move || {
                setup()?;
                let before = snapshot(&t);
                let mut child = prune(&m, &t, "0.3").spawn().unwrap();
                let started = std::time::Instant::now();
                while leftovers(&t).is_empty() {
                    if started.elapsed() > super::TIME_LIMIT || child.try_wait().unwrap().is_some()
                    {
                        let _ = child.kill();
                        return Err((Failure::Silent, "no staging folder ever appeared".into()));
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(Duration::from_millis(ms));
                // SAFETY: signalling a child this test started and has not yet reaped.
                unsafe { libc::kill(child.id() as i32, sig) };
                let status = child.wait().unwrap();
                let state = whole(&t, &before)?;
                // Which of the two depends on timing; the report says what never varies.
                eprintln!("{name} +{ms} ms: {state}, {status}");
                Ok("never partial: earlier output intact or replaced whole".into())
            },
        ));
    }
    let (m, t, setup2) = (model.clone(), target.clone(), setup.clone());
    out.push(Case::new(
        "signals",
        "the run after killed ones",
        "succeeds; no staging folder of a killed run is left beside the output",
        move || {
            setup2()?;
            succeeds(&mut prune(&m, &t, "0.5"))?;
            match leftovers(&t).as_slice() {
                [] => Ok("cleared".into()),
                l => Err((Failure::Silent, format!("left: {l:?}"))),
            }
        },
    ));

    // A full disk, as a file-size limit: the write fails part way.
    let (m, t, setup3) = (model.clone(), target.clone(), setup.clone());
    out.push(Case::new(
        "disk full",
        "prune --overwrite when the disk fills (EFBIG)",
        "exit 1 naming the failed write; the earlier output intact; no staging left",
        move || {
            setup3()?;
            untouched(&[&t, &m], || {
                let r = refused(
                    &mut limited(prune(&m, &t, "0.3"), 1 << 20, true),
                    "File too large",
                )?;
                if !leftovers(&t).is_empty() {
                    return Err((Failure::Silent, "a staging folder was left".into()));
                }
                Ok(r)
            })
        },
    ));
    let (m, t, setup4) = (model.clone(), target.clone(), setup.clone());
    out.push(Case::new(
        "disk full",
        "prune --overwrite killed by SIGXFSZ mid-write",
        "the earlier output intact",
        move || {
            setup4()?;
            let before = snapshot(&t);
            let r = run(&mut limited(prune(&m, &t, "0.3"), 1 << 20, false))?;
            if r.code == Some(0) {
                return Err((Failure::Silent, "succeeded past the limit".into()));
            }
            whole(&t, &before).map(|s| s.to_string())
        },
    ));
    let imported = root.join("imported");
    std::fs::create_dir_all(&imported).unwrap();
    std::fs::write(imported.join("keep.txt"), "earlier").unwrap();
    out.push(Case::new(
        "disk full",
        "import-gguf --overwrite when the disk fills",
        "exit 1; the earlier folder intact; no staging left",
        move || {
            untouched(&[&imported], || {
                let mut c = birdbone();
                c.args(["import-gguf", "--quiet", "--overwrite"])
                    .arg(real_gguf())
                    .arg(&imported);
                let r = refused(&mut limited(c, 1 << 20, true), "File too large")?;
                if !leftovers(&imported).is_empty() {
                    return Err((Failure::Silent, "a staging folder was left".into()));
                }
                Ok(r)
            })
        },
    ));
    let (m, t) = (model.clone(), target.clone());
    let applied = root.join("applied");
    out.push(Case::new(
        "disk full",
        "apply-masks when the disk fills",
        "exit 1; no output folder; no staging left",
        move || {
            let mut c = birdbone();
            c.args(["apply-masks", "--quiet", "--model"])
                .arg(&m)
                .arg("--masks")
                .arg(t.join("masks.safetensors"))
                .arg("--out")
                .arg(&applied);
            let r = refused(&mut limited(c, 1 << 20, true), "File too large")?;
            if applied.exists() || !leftovers(&applied).is_empty() {
                return Err((Failure::Silent, "output or staging left".into()));
            }
            Ok(r)
        },
    ));
    out
}
