//! Live upgrades: a component offered again, by a plugin of a higher version, replaces the one
//! loaded for every component created from then on. Components created earlier (a pass in
//! flight, a `Pruner` someone holds) keep the code they were created from: libraries are never
//! unloaded, so that code stays mapped.

use std::path::{Path, PathBuf};

use birdbone_host_api::ComponentInfo;
use serde::Serialize;

use crate::registry::Role;

/// A component replaced by a newer version of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Upgrade {
    /// The component's name.
    pub component: String,
    /// The version (its plugin's) it had.
    pub from_version: String,
    /// The version it has now.
    pub to_version: String,
    /// The file the old version came from.
    pub from: PathBuf,
    /// The file the new version came from.
    pub to: PathBuf,
}

/// Device, inode, size and modification time of a file: what says it was replaced in place
/// (and is scanned again).
pub(crate) type FileStamp = (u64, u64, u64, i64, i64);

/// The [`FileStamp`] of `path` (following links), `None` if it cannot be read.
pub(crate) fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// A plugin version: semantic versioning (`1.2.3`, `1.2.3-beta.1`), compared as SemVer does.
pub fn parse_version(text: &str) -> Result<semver::Version, String> {
    semver::Version::parse(text.trim())
        .map_err(|e| format!("its version '{text}' is not a semantic version ({e})"))
}

/// What one taken component name may do: `Ok(())` when the newcomer replaces the loaded one,
/// else why not (in words that name both files and versions).
pub(crate) fn judge(
    name: &str,
    (old, old_version, old_path): (&ComponentInfo, &str, &Path),
    (new, new_version): (&ComponentInfo, &str),
) -> Result<(), String> {
    let taken = format!(
        "component '{name}' is already offered by {} (version {old_version})",
        old_path.display()
    );
    let (was, is) = (Role::of(old).name(), Role::of(new).name());
    if was != is {
        return Err(format!(
            "{taken} as a {was}; this file offers it as a {is}, and an upgrade must keep the kind (give it another name)"
        ));
    }
    let old_v = parse_version(old_version).map_err(|e| format!("{taken}, and {e}"))?;
    let new_v = parse_version(new_version).map_err(|e| format!("{taken}; {e}"))?;
    if new_v <= old_v {
        return Err(format!(
            "{taken}; this file offers version {new_version}, which is not newer, so it was not replaced (names must be unique; an upgrade needs a higher plugin version)"
        ));
    }
    Ok(())
}
