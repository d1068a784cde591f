//! Where the real text lives: the exllamav2 0.3.2 wheel's calibration files, unpacked by
//! scripts/setup.sh into `.cache/wheels`.

use std::path::PathBuf;

use crate::{Error, Result};

const TEXT_DIR: &str = ".cache/wheels/exllamav2/conversion/standard_cal_data";

/// The folder of the text files: `$BIRDBONE_TEXT_DIR`, else the checkout's `.cache` (found from
/// an executable in `target/<profile>/`, or from the checkout this crate was built in).
pub fn text_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("BIRDBONE_TEXT_DIR") {
        return Ok(PathBuf::from(d));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        if let Some(root) = exe.ancestors().nth(3) {
            candidates.push(root.join(TEXT_DIR));
        }
    }
    candidates.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(TEXT_DIR),
    );
    candidates.into_iter().find(|d| d.is_dir()).ok_or_else(|| {
        Error::Invalid(
            "the text files are missing: run scripts/setup.sh, or set BIRDBONE_TEXT_DIR".into(),
        )
    })
}

/// One of the text files (`wiki.utf8`, `c4.utf8`, `tiny.utf8`, ...) by name, or a path as given.
pub fn read_text(name_or_path: &str) -> Result<String> {
    let p = PathBuf::from(name_or_path);
    let path = if p.exists() {
        p
    } else {
        text_dir()?.join(name_or_path)
    };
    std::fs::read_to_string(&path).map_err(|source| Error::Io { path, source })
}
