//! The GGUF container: header, metadata, tensor directory, data. Every read is bounds-checked,
//! so a truncated or corrupt file is an error naming what was being read and where.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{kquant, quant, Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// No real GGUF file has more; a larger count means a corrupt header.
const SANE_COUNT: u64 = 1 << 24;
/// Arrays of arrays are legal; deeper than this they are an attack on the reader's stack.
const MAX_NESTING: usize = 4;
/// The largest `general.alignment` accepted (llama.cpp writes 32).
const MAX_ALIGNMENT: u64 = 1 << 16;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    /// As a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor storage types this reader knows the size of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// f32.
    F32,
    /// f16.
    F16,
    /// bf16.
    BF16,
    /// 4-bit blocks of 32 with a scale.
    Q4_0,
    /// 4-bit blocks of 32 with a scale and a minimum.
    Q4_1,
    /// 8-bit blocks of 32 with a scale.
    Q8_0,
    /// K-quant: 4-bit, super-blocks of 256 with 6-bit sub-block scales and minimums.
    Q4_K,
    /// K-quant: 5-bit, as Q4_K with a fifth bit.
    Q5_K,
    /// K-quant: 6-bit, super-blocks of 256 with 8-bit sub-block scales.
    Q6_K,
    /// K-quant: 8-bit, super-blocks of 256 with an f32 scale.
    Q8_K,
    /// Any other type, by its GGML number.
    Other(u32),
}

impl GgmlType {
    fn from_u32(t: u32) -> GgmlType {
        match t {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// (elements per block, bytes per block), for the types this reader decodes.
    fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Q8_K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }
}

/// One tensor of the directory.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape in PyTorch order (outermost first; GGUF stores it innermost first).
    pub shape: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> u64 {
        self.shape.iter().fold(1u64, |n, &d| n.saturating_mul(d))
    }
}

/// An open GGUF file (read whole: the checkpoints Birdbone imports are small enough).
pub struct GgufFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// GGUF format version.
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

struct Reader<'a> {
    path: &'a Path,
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn err(&self, what: &str) -> Error {
        Error::Malformed {
            path: self.path.into(),
            message: format!(
                "truncated or corrupt: cannot read {what} at byte {} (the file has {} bytes)",
                self.pos,
                self.b.len()
            ),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| self.err(what))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
    fn malformed(&self, message: String) -> Error {
        Error::Malformed {
            path: self.path.into(),
            message,
        }
    }
    /// A count of things that follow, each at least a byte: more than the bytes left is a
    /// corrupt header, found before anything is allocated for them.
    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64(what)?;
        let left = (self.b.len() - self.pos) as u64;
        if n > SANE_COUNT.min(left) {
            return Err(self.malformed(format!(
                "truncated or corrupt: {what} is {n}, but {left} bytes follow"
            )));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what)? as usize;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| Error::Malformed {
            path: self.path.into(),
            message: format!("{what} is not UTF-8"),
        })
    }
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        let what = format!("the value of '{key}'");
        Ok(match ty {
            0 => Value::U64(self.take(1, &what)?[0] as u64),
            1 => Value::I64(self.take(1, &what)?[0] as i8 as i64),
            2 => Value::U64(u16::from_le_bytes(self.take(2, &what)?.try_into().expect("2")) as u64),
            3 => Value::I64(i16::from_le_bytes(self.take(2, &what)?.try_into().expect("2")) as i64),
            4 => Value::U64(self.u32(&what)? as u64),
            5 => Value::I64(self.u32(&what)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(&what)?) as f64),
            7 => Value::Bool(self.take(1, &what)?[0] != 0),
            8 => Value::Str(self.string(&what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(self
                        .malformed(format!("'{key}' nests arrays more than {MAX_NESTING} deep")));
                }
                let elem = self.u32(&what)?;
                let n = self.count(&what)?;
                let mut v = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    v.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(&what)?),
            11 => Value::I64(self.u64(&what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(&what)?)),
            t => {
                return Err(Error::Malformed {
                    path: self.path.into(),
                    message: format!("'{key}' has unknown value type {t}"),
                })
            }
        })
    }
}

impl GgufFile {
    /// Reads and checks a GGUF file: header, metadata, and that every tensor's data lies inside
    /// the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })?;
        GgufFile::from_bytes(bytes, path)
    }

    /// [`GgufFile::open`] on a file's bytes; errors name `path`.
    pub fn from_bytes(bytes: Vec<u8>, path: &Path) -> Result<GgufFile> {
        let mut r = Reader {
            path,
            b: &bytes,
            pos: 0,
        };
        if r.take(4, "the magic number")? != MAGIC {
            return Err(Error::Malformed {
                path: path.into(),
                message: "not a GGUF file (no 'GGUF' magic)".into(),
            });
        }
        let version = r.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Unsupported(format!(
                "{}: GGUF version {version} (this reader knows 2 and 3)",
                path.display()
            )));
        }
        let n_tensors = r.count("the tensor count")?;
        let n_kv = r.count("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string("a metadata key")?;
            let ty = r.u32("a metadata type")?;
            let v = r.value(ty, &key, 0)?;
            if metadata.contains_key(&key) {
                return Err(r.malformed(format!("metadata key '{key}' appears twice")));
            }
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = std::collections::HashSet::new();
        for _ in 0..n_tensors {
            let name = r.string("a tensor name")?;
            let nd = r.u32("a tensor rank")?;
            if nd > 8 {
                return Err(Error::Malformed {
                    path: path.into(),
                    message: format!("tensor '{name}' claims {nd} dimensions"),
                });
            }
            let mut shape = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                shape.push(r.u64("a tensor dimension")?);
            }
            shape.reverse();
            if shape
                .iter()
                .try_fold(1u64, |n, &d| n.checked_mul(d))
                .is_none_or(|n| n > i64::MAX as u64)
            {
                return Err(r.malformed(format!(
                    "tensor '{name}' has dimensions {shape:?}, more elements than any file holds"
                )));
            }
            let ggml_type = GgmlType::from_u32(r.u32("a tensor type")?);
            let offset = r.u64("a tensor offset")?;
            if !names.insert(name.clone()) {
                return Err(r.malformed(format!("tensor '{name}' appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                shape,
                ggml_type,
                offset,
            });
        }
        let align = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v
                .as_u64()
                .filter(|a| a.is_power_of_two() && *a <= MAX_ALIGNMENT)
                .ok_or_else(|| {
                    r.malformed(format!(
                        "general.alignment is {v:?}: expected a power of two up to {MAX_ALIGNMENT}"
                    ))
                })?,
        };
        let data_start = (r.pos as u64).div_ceil(align) * align;
        if let Some(t) = tensors.iter().find(|t| t.offset % align != 0) {
            return Err(r.malformed(format!(
                "tensor '{}' starts at offset {}, not a multiple of the alignment {align}",
                t.name, t.offset
            )));
        }
        let f = GgufFile {
            path: path.into(),
            bytes,
            version,
            metadata,
            tensors,
            data_start,
        };
        for t in &f.tensors {
            if let Some((start, end)) = f.extent(t)? {
                if end > f.bytes.len() as u64 {
                    return Err(Error::Malformed {
                        path: path.into(),
                        message: format!(
                            "truncated: tensor '{}' needs bytes {start}..{end} but the file has {} bytes",
                            t.name,
                            f.bytes.len()
                        ),
                    });
                }
            }
        }
        Ok(f)
    }

    fn extent(&self, t: &TensorInfo) -> Result<Option<(u64, u64)>> {
        let Some((per, bytes)) = t.ggml_type.block() else {
            return Ok(None);
        };
        let n = t.numel();
        if n % per != 0 {
            return Err(Error::Malformed {
                path: self.path.clone(),
                message: format!(
                    "tensor '{}' has {n} elements, not whole blocks of {per}",
                    t.name
                ),
            });
        }
        let end = (n / per)
            .checked_mul(bytes)
            .and_then(|len| self.data_start.checked_add(t.offset)?.checked_add(len));
        match end {
            Some(end) => Ok(Some((self.data_start + t.offset, end))),
            None => Err(Error::Malformed {
                path: self.path.clone(),
                message: format!(
                    "tensor '{}' at offset {} with {n} elements lies past any file",
                    t.name, t.offset
                ),
            }),
        }
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A tensor's elements as f32 (dequantised), row-major in its PyTorch shape.
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let (start, end) = self.extent(t)?.ok_or_else(|| {
            Error::Unsupported(format!(
                "tensor '{}' has GGML type {:?}; supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K, Q8_K",
                t.name, t.ggml_type
            ))
        })?;
        let data = &self.bytes[start as usize..end as usize];
        let mut out = Vec::with_capacity(t.numel() as usize);
        match t.ggml_type {
            GgmlType::F32 => out.extend(
                data.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4"))),
            ),
            GgmlType::F16 => out.extend(
                data.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            GgmlType::BF16 => out.extend(
                data.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
            ),
            GgmlType::Q4_0 => quant::q4_0(data, &mut out),
            GgmlType::Q4_1 => quant::q4_1(data, &mut out),
            GgmlType::Q8_0 => quant::q8_0(data, &mut out),
            GgmlType::Q4_K => kquant::q4_k(data, &mut out),
            GgmlType::Q5_K => kquant::q5_k(data, &mut out),
            GgmlType::Q6_K => kquant::q6_k(data, &mut out),
            GgmlType::Q8_K => kquant::q8_k(data, &mut out),
            GgmlType::Other(_) => unreachable!("extent() refused it"),
        }
        Ok(out)
    }
}
