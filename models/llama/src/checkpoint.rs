//! Hugging Face-style checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`.

use std::{collections::BTreeSet, path::Path};

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Every tensor of the checkpoint in `dir`, converted to `kind` (floating tensors only) and
/// moved to `device`, sorted by name. A truncated or corrupt file is an error naming it.
pub fn load_dir(dir: &Path, kind: Option<Kind>, device: Device) -> Result<Vec<(String, Tensor)>> {
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| Error::Io {
            path: index.clone(),
            source,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Format {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let map = v["weight_map"].as_object().ok_or_else(|| Error::Format {
            path: index.clone(),
            message: "no weight_map".into(),
        })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut out = Vec::new();
    for f in files {
        if !f.exists() {
            return Err(Error::Io {
                path: f,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such checkpoint file",
                ),
            });
        }
        let tensors = Tensor::read_safetensors(&f).map_err(|e| Error::Format {
            path: f.clone(),
            message: format!("cannot read checkpoint: {e}"),
        })?;
        for (name, t) in tensors {
            let t = match kind {
                Some(k) if t.is_floating_point() && t.kind() != k => t.f_to_kind(k)?,
                _ => t,
            };
            out.push((name, t.f_to_device(device)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Writes named tensors to one safetensors file (moving them to the CPU as it goes).
pub fn save(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), t.f_to_device(Device::Cpu)?.f_contiguous()?)))
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&cpu, path).map_err(|e| Error::Format {
        path: path.into(),
        message: format!("cannot write checkpoint: {e}"),
    })
}
