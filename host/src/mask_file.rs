//! The mask file format: safetensors holding one `u8` tensor per parameter (its packed keep
//! bits, in [`birdbone_select::BitMask`]'s layout: bit `i % 8` of byte `i / 8` is weight `i`,
//! 1 = kept, padded with zeros to whole 32-bit words), named like the parameter, with
//! `format = birdbone-mask-v1` and each parameter's shape (`shape:<name>`, JSON) in the
//! metadata. An adapter moves the bytes to and from its tensors.

use std::{collections::HashMap, path::Path};

use birdbone_select::{mask_bytes, BitMask};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{Error, Result};

const FORMAT_KEY: &str = "format";
const FORMAT: &str = "birdbone-mask-v1";

/// One parameter's mask as it is stored.
pub struct StoredMask {
    /// The parameter's name.
    pub name: String,
    /// The parameter's shape.
    pub shape: Vec<i64>,
    /// Its packed keep bits (`mask_bytes(numel)` bytes).
    pub bits: Vec<u8>,
}

/// Writes masks to `path`.
pub fn write(masks: &[StoredMask], path: &Path) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert(FORMAT_KEY.to_string(), FORMAT.to_string());
    for m in masks {
        meta.insert(
            format!("shape:{}", m.name),
            serde_json::to_string(&m.shape).expect("a list of integers"),
        );
    }
    let views: Vec<(String, TensorView<'_>)> = masks
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                TensorView::new(Dtype::U8, vec![m.bits.len()], &m.bits).expect("length matches"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| Error::Format {
        path: path.into(),
        message: e.to_string(),
    })
}

/// Reads masks written by [`write`], checking every length and padding bit.
pub fn read(path: &Path) -> Result<Vec<StoredMask>> {
    let data = std::fs::read(path).map_err(|source| Error::Io {
        path: path.into(),
        source,
    })?;
    read_bytes(&data, path)
}

/// [`read`] on a file's bytes; errors name `path`.
pub fn read_bytes(data: &[u8], path: &Path) -> Result<Vec<StoredMask>> {
    let bad = |message: String| Error::Format {
        path: path.into(),
        message,
    };
    let (_, metadata) = SafeTensors::read_metadata(data)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let meta = metadata.metadata().clone().unwrap_or_default();
    if meta.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT) {
        return Err(bad(format!(
            "not a Birdbone mask file (metadata '{FORMAT_KEY}' is not '{FORMAT}')"
        )));
    }
    let st = SafeTensors::deserialize(data).map_err(|e| bad(e.to_string()))?;
    let mut masks = Vec::new();
    for (name, view) in st.tensors() {
        let shape: Vec<i64> = meta
            .get(&format!("shape:{name}"))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| bad(format!("no shape recorded for '{name}'")))?;
        // The shape decides the byte count: negative or overflowing dimensions are refused
        // before any size is computed from them.
        let numel = shape
            .iter()
            .try_fold(1u64, |n, &d| {
                u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
            })
            .filter(|&n| n <= view.data().len() as u64 * 8)
            .ok_or_else(|| {
                bad(format!(
                    "mask '{name}' records shape {shape:?}, which its {} bytes cannot hold",
                    view.data().len()
                ))
            })? as usize;
        if view.dtype() != Dtype::U8 || view.data().len() != mask_bytes(numel) {
            return Err(bad(format!(
                "mask '{name}' has {} bytes; a {shape:?} parameter needs {}",
                view.data().len(),
                mask_bytes(numel)
            )));
        }
        let Some(bits) = BitMask::from_bytes(numel, view.data().to_vec()) else {
            return Err(bad(format!(
                "mask '{name}' has bits set past its {numel} weights"
            )));
        };
        masks.push(StoredMask {
            name,
            shape,
            bits: bits.into_bytes(),
        });
    }
    Ok(masks)
}
