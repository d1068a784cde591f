//! safetensors headers and `model.safetensors.index.json`, read and checked without loading a
//! tensor.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::{Error, Result};

/// The index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The one file of an unsharded checkpoint.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The safetensors crate's own limit on a header.
const MAX_HEADER: u64 = 100_000_000;

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

/// Bytes per element of a safetensors dtype name (None for ones not known here).
fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" => 8,
        "U16" | "I16" | "F16" | "BF16" => 16,
        "U32" | "I32" | "F32" => 32,
        "U64" | "I64" | "F64" => 64,
        _ => return None,
    })
}

/// The weight map of an index file: tensor name to shard file name. Every shard is a plain
/// file name ending in `.safetensors` (no folder, so the index cannot point outside its
/// folder).
pub fn parse_index(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, String>> {
    let bad = |message: String| Error::Format {
        path: path.into(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    if map.is_empty() {
        return Err(bad("weight_map is empty".into()));
    }
    let mut out = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map['{name}'] is not a file name")))?;
        let plain = !file.is_empty()
            && Path::new(file).file_name().and_then(|f| f.to_str()) == Some(file)
            && !file.contains(['/', '\\', '\0'])
            && file.ends_with(".safetensors");
        if !plain {
            return Err(bad(format!(
                "weight_map['{name}'] is {file:?}: expected a .safetensors file name in this folder"
            )));
        }
        out.insert(name.clone(), file.to_string());
    }
    Ok(out)
}

/// The safetensors files of the checkpoint in `dir`: the shards its index lists, or
/// `model.safetensors`.
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(INDEX_FILE);
    if !index.exists() {
        return Ok(vec![dir.join(SINGLE_FILE)]);
    }
    let bytes = std::fs::read(&index).map_err(|source| Error::Io {
        path: index.clone(),
        source,
    })?;
    let shards: BTreeSet<String> = parse_index(&bytes, &index)?.into_values().collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// The tensors a safetensors header describes, checked: known element types, shapes whose
/// byte size matches their data offsets, offsets inside the `data_len` bytes after the header
/// and not overlapping.
pub fn parse_header(header: &[u8], data_len: u64, path: &Path) -> Result<Vec<TensorEntry>> {
    let bad = |message: String| Error::Format {
        path: path.into(),
        message,
    };
    let v: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| bad(format!("header: {e}")))?;
    let mut out = vec![];
    let mut spans = vec![];
    for (name, info) in v {
        if name == "__metadata__" {
            if !info.is_object() {
                return Err(bad("__metadata__ is not an object".into()));
            }
            continue;
        }
        let dtype = info["dtype"]
            .as_str()
            .ok_or_else(|| bad(format!("tensor '{name}' has no dtype")))?;
        let bits = dtype_bits(dtype)
            .ok_or_else(|| bad(format!("tensor '{name}' has unknown dtype {dtype:?}")))?;
        let shape: Vec<u64> = info["shape"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<_>>())
            .ok_or_else(|| bad(format!("tensor '{name}' has no shape of whole numbers")))?;
        let offsets: Vec<u64> = info["data_offsets"]
            .as_array()
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect::<Option<_>>())
            .filter(|o: &Vec<u64>| o.len() == 2)
            .ok_or_else(|| bad(format!("tensor '{name}' has no data_offsets [begin, end]")))?;
        let bytes = shape
            .iter()
            .try_fold(bits, |n, &d| n.checked_mul(d))
            .map(|b| b.div_ceil(8))
            .filter(|&b| b <= data_len)
            .ok_or_else(|| {
                bad(format!(
                    "tensor '{name}' of shape {shape:?} is larger than the file"
                ))
            })?;
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end || end > data_len || end - begin != bytes {
            return Err(bad(format!(
                "tensor '{name}': data_offsets [{begin}, {end}] do not hold {bytes} bytes inside the {data_len} bytes of data"
            )));
        }
        spans.push((begin, end, name.clone()));
        out.push(TensorEntry {
            name,
            shape: shape.iter().map(|&d| d as i64).collect(),
            dtype: dtype.to_string(),
        });
    }
    spans.sort();
    for w in spans.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(bad(format!(
                "tensors '{}' and '{}' overlap",
                w[0].2, w[1].2
            )));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The tensors of the checkpoint in `dir` from the file headers alone (nothing is loaded),
/// sorted by name. A tensor in two shards, or an index naming a tensor its shard lacks, is an
/// error.
pub fn read_header(dir: &Path) -> Result<Vec<TensorEntry>> {
    use std::io::Read;
    let index = dir.join(INDEX_FILE);
    let listed = if index.exists() {
        let bytes = std::fs::read(&index).map_err(|source| Error::Io {
            path: index.clone(),
            source,
        })?;
        Some(parse_index(&bytes, &index)?)
    } else {
        None
    };
    let files = shard_files(dir)?;
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(Error::Io {
            path: missing.clone(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such checkpoint file"),
        });
    }
    let mut out: Vec<TensorEntry> = vec![];
    for f in files {
        let io = |source| Error::Io {
            path: f.clone(),
            source,
        };
        let mut file = std::fs::File::open(&f).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|_| Error::Format {
            path: f.clone(),
            message: format!("truncated: {file_len} bytes, not a safetensors file"),
        })?;
        let len = u64::from_le_bytes(len);
        if len > file_len.saturating_sub(8) || len > MAX_HEADER {
            return Err(Error::Format {
                path: f.clone(),
                message: format!("header length {len} does not fit the file ({file_len} bytes)"),
            });
        }
        let mut header = vec![0u8; len as usize];
        file.read_exact(&mut header).map_err(io)?;
        let entries = parse_header(&header, file_len - 8 - len, &f)?;
        if let Some(map) = &listed {
            let shard = f.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some(e) = entries
                .iter()
                .find(|e| map.get(&e.name).map(String::as_str) != Some(shard))
            {
                return Err(Error::Format {
                    path: index.clone(),
                    message: format!(
                        "tensor '{}' is in {shard} but the index does not list it there",
                        e.name
                    ),
                });
            }
        }
        out.extend(entries);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(Error::Format {
            path: dir.into(),
            message: format!("tensor '{}' is in two shards", w[0].name),
        });
    }
    if let Some(map) = &listed {
        if let Some(missing) = map
            .keys()
            .find(|k| out.binary_search_by(|e| e.name.cmp(k)).is_err())
        {
            return Err(Error::Format {
                path: index,
                message: format!("tensor '{missing}' is listed but no shard holds it"),
            });
        }
    }
    Ok(out)
}
