//! Hugging Face-style checkpoints: `model.safetensors`, or shards listed in
//! `model.safetensors.index.json`.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// Every tensor of the checkpoint in `dir`, converted to `kind` (floating tensors only) and
/// moved to `device`, sorted by name. A truncated or corrupt file is an error naming it.
pub fn load_dir(dir: &Path, kind: Option<Kind>, device: Device) -> Result<Vec<(String, Tensor)>> {
    // The headers and the index are checked first (sizes, offsets, every tensor in the shard
    // the index names), so libtorch only ever reads files that hold together.
    read_header(dir)?;
    let files = birdbone_model_folder::shard_files(dir)?;
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

pub use birdbone_model_folder::{read_header, TensorEntry};
