//! `birdbone-plugin-probe PLUGIN.so`: loads one plugin library as a registry would (its
//! constructors, abi_stable's layout check, the Birdbone ABI version, its manifest) and prints a
//! `birdbone_host::trust::ProbeReport` as one line of JSON on standard output. The answer is in
//! the JSON (`ok`, `reason`); the exit status is 0 whenever the probe got that far, 2 for a bad
//! command line. A library that crashes, exits or hangs while loading ends this process instead,
//! which the host reports as the reason it refused the file (docs/plugins-trust.md).

use std::{io::Write, path::Path, process::ExitCode};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    match args.as_slice() {
        [flag] if flag == "--version" => {
            let r = birdbone_host::trust::ProbeReport::new();
            println!(
                "birdbone-plugin-probe {} (plugin ABI {})",
                r.probe_version, r.host_abi
            );
            ExitCode::SUCCESS
        }
        [path] if path != "--help" && path != "-h" => {
            let report = birdbone_host::probe_library(Path::new(path));
            let json = serde_json::to_string(&report).expect("a report serializes");
            let mut out = std::io::stdout().lock();
            // A newline first: whatever the library printed without one stays on its own line.
            if writeln!(out, "\n{json}").and_then(|_| out.flush()).is_err() {
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: birdbone-plugin-probe PLUGIN.so\n\nLoads one Birdbone plugin in this process and prints what it found as JSON.\nThe birdbone host runs it before it loads a new plugin file (docs/plugins-trust.md)."
            );
            ExitCode::from(2)
        }
    }
}
