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

/// The files [`save_model`] wrote: shard names (relative to the folder) and the total bytes of
/// tensor data.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SavedModel {
    /// `model.safetensors`, or `model-0000K-of-0000N.safetensors` for each shard.
    pub files: Vec<String>,
    /// Bytes of tensor data.
    pub total_size: u64,
    /// Whether `model.safetensors.index.json` lists the shards.
    pub sharded: bool,
}

fn st_dtype(kind: Kind) -> Result<safetensors::Dtype> {
    use safetensors::Dtype as D;
    Ok(match kind {
        Kind::Float => D::F32,
        Kind::Half => D::F16,
        Kind::BFloat16 => D::BF16,
        Kind::Double => D::F64,
        Kind::Int64 => D::I64,
        Kind::Int => D::I32,
        Kind::Int16 => D::I16,
        Kind::Int8 => D::I8,
        Kind::Uint8 => D::U8,
        Kind::Bool => D::BOOL,
        other => {
            return Err(Error::Invalid(format!(
                "cannot write a {other:?} tensor to safetensors"
            )))
        }
    })
}

/// Writes named tensors into `dir` as Hugging Face does: one `model.safetensors` up to
/// `max_shard_bytes`, else shards of at most that size (a larger tensor gets one of its own)
/// with `model.safetensors.index.json`. Files carry the `format: pt` metadata transformers
/// asks for. Tensors are copied to host memory one shard at a time.
pub fn save_model(
    tensors: &[(String, Tensor)],
    dir: &Path,
    max_shard_bytes: u64,
) -> Result<SavedModel> {
    let size = |t: &Tensor| (t.numel() * t.kind().elt_size_in_bytes()) as u64;
    let mut shards: Vec<Vec<usize>> = vec![vec![]];
    let mut current = 0u64;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let s = size(t);
        if current > 0 && current + s > max_shard_bytes {
            shards.push(vec![]);
            current = 0;
        }
        shards.last_mut().expect("one").push(i);
        current += s;
    }
    let n = shards.len();
    let name = |k: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", k + 1)
        }
    };
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let mut weight_map = serde_json::Map::new();
    let mut total_size = 0u64;
    let mut files = vec![];
    for (k, shard) in shards.iter().enumerate() {
        let file = name(k);
        let mut data = Vec::with_capacity(shard.len());
        for &i in shard {
            let (tname, t) = &tensors[i];
            let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
            let mut bytes = vec![0u8; size(&t) as usize];
            t.f_copy_data_u8(&mut bytes, t.numel())?;
            let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
            data.push((tname.clone(), st_dtype(t.kind())?, shape, bytes));
            weight_map.insert(tname.clone(), serde_json::Value::String(file.clone()));
            total_size += size(&t);
        }
        let views = data
            .iter()
            .map(|(n, d, s, b)| {
                safetensors::tensor::TensorView::new(*d, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Invalid(format!("tensor '{n}': {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, metadata.clone(), &path).map_err(|e| {
            Error::Format {
                path: path.clone(),
                message: format!("cannot write checkpoint: {e}"),
            }
        })?;
        files.push(file);
    }
    if n > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": total_size},
            "weight_map": weight_map,
        });
        let path = dir.join("model.safetensors.index.json");
        std::fs::write(&path, serde_json::to_string_pretty(&index).expect("json"))
            .map_err(|source| Error::Io { path, source })?;
    }
    Ok(SavedModel {
        files,
        total_size,
        sharded: n > 1,
    })
}

/// One tensor of a checkpoint, as its file header describes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TensorEntry {
    /// Its name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its safetensors element type (F32, BF16, ...).
    pub dtype: String,
}

/// The tensors of the checkpoint in `dir` from the file headers alone (nothing is loaded),
/// sorted by name.
pub fn read_header(dir: &Path) -> Result<Vec<TensorEntry>> {
    use std::io::Read;
    let index = dir.join("model.safetensors.index.json");
    let files: Vec<std::path::PathBuf> = if index.exists() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index).map_err(
            |source| Error::Io {
                path: index.clone(),
                source,
            },
        )?)
        .map_err(|e| Error::Format {
            path: index.clone(),
            message: e.to_string(),
        })?;
        let shards: BTreeSet<String> = v["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.into_iter().map(|s| dir.join(s)).collect()
    } else {
        vec![dir.join("model.safetensors")]
    };
    let mut out = vec![];
    for f in files {
        let io = |source| Error::Io {
            path: f.clone(),
            source,
        };
        let fmt = |message: String| Error::Format {
            path: f.clone(),
            message,
        };
        let mut file = std::fs::File::open(&f).map_err(io)?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(io)?;
        let len = u64::from_le_bytes(len);
        let file_len = file.metadata().map_err(io)?.len();
        if len > file_len.saturating_sub(8) || len > 100_000_000 {
            return Err(fmt(format!(
                "header length {len} does not fit the file ({file_len} bytes)"
            )));
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| fmt(format!("header: {e}")))?;
        for (name, info) in v {
            if name == "__metadata__" {
                continue;
            }
            let shape = info["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_i64()).collect())
                .ok_or_else(|| fmt(format!("tensor '{name}' has no shape")))?;
            let dtype = info["dtype"].as_str().unwrap_or("?").to_string();
            out.push(TensorEntry { name, shape, dtype });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
