//! The pruned model's folder: a Hugging Face model folder that plain transformers loads
//! (weights, sharded past a size; `config.json` saying the element type written; the tokenizer
//! files), and beside it how it was made (`recipe.yaml`, `birdbone.json`), what was pruned
//! (`report.json`) and the 1-bit masks (`masks.safetensors`).
//!
//! Everything is written into a staging folder beside the target and moved into place at the
//! end, so an interrupted run leaves any earlier output untouched.

use std::path::{Path, PathBuf};

use anyhow::Context;
use birdbone_host::{recipe::Dtype, PassReport, Recipe};
use birdbone_llama::checkpoint::{self, SavedModel};
use birdbone_tch::{MaskSet, PluginRegistry};
use serde_json::{json, Value};
use tch::Tensor;

/// Files copied from the source folder as they are (those present).
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
];

/// What goes into the folder.
pub struct ModelOut<'a> {
    /// The folder the model came from.
    pub source: &'a Path,
    /// The weights, by checkpoint name.
    pub tensors: &'a [(String, Tensor)],
    /// The element type written (recorded in config.json).
    pub dtype: Option<Dtype>,
    /// The largest shard.
    pub max_shard_bytes: u64,
    /// The masks, when there are any.
    pub masks: Option<&'a MaskSet>,
    /// The effective recipe.
    pub recipe: Option<&'a Recipe>,
    /// What the pass did.
    pub report: Option<&'a PassReport>,
    /// The allocation the pass pruned by (`allocation.json`, replayable).
    pub allocation: Option<&'a birdbone_host::Allocation>,
    /// Provenance: the tool, the plugins, the source.
    pub provenance: Value,
}

/// The staging folder of `out`: hidden beside it, named for this process so two runs never
/// share one.
fn staging(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.birdbone-partial-{}", std::process::id()))
}

/// Checks, before any work, that `out` may be written: not the source (a model folder or a
/// file), inside it or around it; and not a folder with files in it unless `overwrite`.
pub fn check_target(out: &Path, source: &Path, overwrite: bool) -> anyhow::Result<()> {
    if out.file_name().is_none() {
        anyhow::bail!(
            "output folder {}: name the folder itself (not `.` or `..`)",
            out.display()
        );
    }
    let src = source
        .canonicalize()
        .with_context(|| format!("{}", source.display()))?;
    let target = resolved(out)?;
    if target == src || target.starts_with(&src) || src.starts_with(&target) {
        anyhow::bail!(
            "output folder {} is the source {}, inside it or around it: choose another folder",
            out.display(),
            src.display()
        );
    }
    if out.exists() && !out.is_dir() {
        anyhow::bail!("output folder {} exists and is not a folder", out.display());
    }
    let occupied = out.is_dir()
        && std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some();
    if occupied && !overwrite {
        anyhow::bail!(
            "output folder {} exists and is not empty: pass --overwrite to replace it (it stays as it is until the new folder is complete)",
            out.display()
        );
    }
    Ok(())
}

/// `p` made absolute with its existing part's symbolic links resolved (the rest may not exist
/// yet).
fn resolved(p: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(p)?;
    let mut existing = abs.as_path();
    let mut rest = vec![];
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Writes the folder; returns what the weights took. See [`write_folder`].
pub fn write(out: &Path, m: &ModelOut) -> anyhow::Result<SavedModel> {
    write_folder(out, |stage| fill(stage, m))
}

/// Writes a folder through `fill`: everything goes into a staging folder beside `out`, is
/// flushed to disk, and then takes `out`'s place in one step (an existing folder is exchanged
/// with it atomically where the system can, and removed after), so an interrupted or failed run
/// leaves any earlier folder as it was, and nothing of it survives a completed one.
pub fn write_folder<T>(
    out: &Path,
    fill: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    remove_abandoned_stages(out);
    let stage = staging(out);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let filled = fill(&stage)
        .and_then(|v| set_modes(&stage).map(|()| v))
        .and_then(|v| sync_dir(&stage).map(|()| v));
    let value = match filled {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e);
        }
    };
    if out.exists() {
        if exchange(&stage, out).is_ok() {
            // The stage now holds the old folder.
            std::fs::remove_dir_all(&stage)
                .with_context(|| format!("removing the old folder, now at {}", stage.display()))?;
            return Ok(value);
        }
        // No atomic exchange here: the old folder moves aside, then the new one in; if that
        // fails, the old one comes back.
        let old = stage.with_extension("old");
        if let Err(e) = std::fs::rename(out, &old) {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e).with_context(|| format!("moving {} aside", out.display()));
        }
        if let Err(e) = std::fs::rename(&stage, out) {
            let _ = std::fs::rename(&old, out);
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e).with_context(|| format!("moving the new folder to {}", out.display()));
        }
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("removing the old folder, now at {}", old.display()))?;
    } else if let Err(e) = std::fs::rename(&stage, out) {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e).with_context(|| format!("moving the new folder to {}", out.display()));
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(value)
}

/// Staging folders of `out` left by runs that were killed (their process is gone): removed, so
/// nothing of an abandoned run stays beside the output.
fn remove_abandoned_stages(out: &Path) {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.birdbone-partial-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.trim_end_matches(".old");
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
        // Where /proc does not say which processes live, nothing is removed.
        if !alive && cfg!(target_os = "linux") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Some writers create files readable by their owner only: every file gets the mode a new
/// file has under the user's umask.
fn set_modes(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // SAFETY: umask only swaps the process's file-creation mask; it is put back at once.
        let umask = unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        };
        let mode = 0o666 & !(umask as u32);
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Every file of `dir`, then `dir` itself, flushed to disk.
fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("flushing {}", path.display()))?;
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("flushing {}", dir.display()))
}

/// Exchanges two folders in one step (Linux `renameat2` with `RENAME_EXCHANGE`).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::{ffi::CString, os::unix::ffi::OsStrExt};
        let ca = CString::new(a.as_os_str().as_bytes())?;
        let cb = CString::new(b.as_os_str().as_bytes())?;
        // SAFETY: two NUL-terminated paths relative to the working directory; no memory is
        // shared with the call beyond them.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        Err(std::io::Error::last_os_error())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (a, b);
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

fn write_json(dir: &Path, name: &str, v: &impl serde::Serialize) -> anyhow::Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

fn fill(dir: &Path, m: &ModelOut) -> anyhow::Result<SavedModel> {
    let saved = checkpoint::save_model(m.tensors, dir, m.max_shard_bytes)?;
    let config_path = m.source.join("config.json");
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", config_path.display()))?;
    if let (Some(d), Some(obj)) = (m.dtype, config.as_object_mut()) {
        obj.insert("torch_dtype".into(), json!(d.torch_name()));
        if obj.contains_key("dtype") {
            obj.insert("dtype".into(), json!(d.torch_name()));
        }
    }
    write_json(dir, "config.json", &config)?;
    for f in TOKENIZER_FILES {
        let src = m.source.join(f);
        if src.is_file() {
            std::fs::copy(&src, dir.join(f))
                .with_context(|| format!("copying {}", src.display()))?;
        }
    }
    if let Some(masks) = m.masks {
        masks
            .save(&dir.join("masks.safetensors"))
            .context("writing masks.safetensors")?;
    }
    if let Some(r) = m.recipe {
        std::fs::write(dir.join("recipe.yaml"), r.to_yaml()).context("writing recipe.yaml")?;
    }
    if let Some(r) = m.report {
        write_json(dir, "report.json", &report_json(r))?;
    }
    if let Some(a) = m.allocation {
        write_json(dir, "allocation.json", a)?;
    }
    write_json(dir, "birdbone.json", &m.provenance)?;
    Ok(saved)
}

/// The report with a per-layer summary beside the per-parameter rows.
pub fn report_json(r: &PassReport) -> Value {
    let mut v = serde_json::to_value(r).expect("a report serializes");
    v["layers"] = serde_json::to_value(crate::plot::layer_rows(r)).expect("rows serialize");
    v
}

/// Who made the folder and with what: the tool's version, each component's plugin.
pub fn provenance(
    reg: Option<&PluginRegistry>,
    components: &[&str],
    model: &str,
    source: &Path,
) -> Value {
    let plugins: Vec<Value> = components
        .iter()
        .filter_map(|name| reg.and_then(|r| r.component(name)))
        .map(|c| {
            json!({
                "component": c.info.name.as_str(),
                "plugin": c.plugin.manifest.name.as_str(),
                "version": c.plugin.manifest.version.as_str(),
                "abi": c.plugin.manifest.abi.to_string(),
                "file": c.plugin.path.file_name().map(|f| f.to_string_lossy().into_owned()),
            })
        })
        .collect();
    json!({
        "tool": "birdbone",
        "version": env!("CARGO_PKG_VERSION"),
        "plugins": plugins,
        "source": {"model": model, "folder": source},
    })
}
