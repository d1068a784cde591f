//! Every saved fuzz input (the corpora in fuzz/corpus/, and the inputs of every crash found,
//! in fuzz/regressions/) run through its parser on stable Rust: none may panic. A crash the
//! fuzzer finds is saved in fuzz/regressions/<target>/ and stays a test from then on.

use std::path::PathBuf;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

#[test]
fn every_saved_input_parses_or_is_refused_without_a_panic() {
    let mut counts = vec![];
    for (target, run) in birdbone_fuzz_entry::TARGETS {
        let mut n = 0;
        for kind in ["corpus", "regressions"] {
            let dir = fuzz_dir().join(kind).join(target);
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).unwrap();
                if std::panic::catch_unwind(|| run(&data)).is_err() {
                    panic!("{target}: {} panicked", f.display());
                }
                n += 1;
            }
        }
        counts.push(format!("{target}: {n}"));
        assert!(
            n > 0,
            "{target}: no saved inputs in {}",
            fuzz_dir().display()
        );
    }
    eprintln!("replayed {}", counts.join(", "));
}
