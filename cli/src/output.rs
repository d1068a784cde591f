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
    /// Provenance: the tool, the plugins, the source.
    pub provenance: Value,
}

/// The staging folder of `out`.
fn staging(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map_or("out".into(), |n| n.to_string_lossy().into_owned());
    out.with_file_name(format!(".{name}.birdbone-partial"))
}

/// Writes the folder; returns what the weights took.
pub fn write(out: &Path, m: &ModelOut) -> anyhow::Result<SavedModel> {
    if out.exists() && !out.is_dir() {
        anyhow::bail!("--out {}: exists and is not a folder", out.display());
    }
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let stage = staging(out);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
    let result = fill(&stage, m);
    let saved = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&stage);
            return Err(e);
        }
    };
    // Swap into place: the old folder (if any) goes only once the new one is whole.
    let old = out.with_file_name(format!(
        ".{}.birdbone-old",
        out.file_name()
            .map_or("out".into(), |n| n.to_string_lossy().into_owned())
    ));
    if out.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        std::fs::rename(out, &old).with_context(|| format!("moving {} aside", out.display()))?;
    }
    std::fs::rename(&stage, out)
        .with_context(|| format!("moving the new folder to {}", out.display()))?;
    if old.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(saved)
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
        masks.save(&dir.join("masks.safetensors"))?;
    }
    if let Some(r) = m.recipe {
        std::fs::write(dir.join("recipe.yaml"), r.to_yaml())?;
    }
    if let Some(r) = m.report {
        write_json(dir, "report.json", &report_json(r))?;
    }
    write_json(dir, "birdbone.json", &m.provenance)?;
    // Some writers create files readable by their owner only; a model folder is for sharing.
    #[cfg(unix)]
    for entry in std::fs::read_dir(dir)? {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(entry?.path(), std::fs::Permissions::from_mode(0o644))?;
    }
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
