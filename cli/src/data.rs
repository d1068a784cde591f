//! Where the real text lives: the exllamav2 0.3.2 wheel's calibration files, unpacked by
//! scripts/setup.sh into `.cache/wheels`.

use std::path::PathBuf;

const TEXT_DIR: &str = ".cache/wheels/exllamav2/conversion/standard_cal_data";

/// The folder of the text files: `$BIRDBONE_TEXT_DIR`, else the checkout's `.cache` (found from
/// the executable in `target/<profile>/` or from the build's checkout).
pub fn text_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("BIRDBONE_TEXT_DIR") {
        return Ok(PathBuf::from(d));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.parent())
        {
            candidates.push(root.join(TEXT_DIR));
        }
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(TEXT_DIR),
    );
    candidates.into_iter().find(|d| d.is_dir()).ok_or_else(|| {
        anyhow::anyhow!(
            "the text files are missing: run scripts/setup.sh, or set BIRDBONE_TEXT_DIR"
        )
    })
}

/// One of the text files (`wiki.utf8`, `c4.utf8`, `tiny.utf8`) by name, or a path as given.
pub fn text(name_or_path: &str) -> anyhow::Result<String> {
    let p = PathBuf::from(name_or_path);
    let path = if p.exists() {
        p
    } else {
        text_dir()?.join(name_or_path)
    };
    std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
