//! `tokenizer.json`, loaded through the tokenizers crate with the checks it lacks: a BPE merge
//! whose joined token is missing from the vocabulary makes tokenizers 0.23 index past a buffer
//! and panic (found by fuzzing), so merges are checked first, and any panic left is caught and
//! reported as an error naming the file.

use std::{collections::HashSet, path::Path};

use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Largest tokenizer.json read (real ones are a few MB; Gemma's is about 33 MB).
const MAX_TOKENIZER_BYTES: u64 = 256 << 20;

/// Loads `tokenizer.json` from `path`.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    let io = |source| Error::Io {
        path: path.into(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_TOKENIZER_BYTES {
        return Err(Error::Format {
            path: path.into(),
            message: format!("{len} bytes: larger than any tokenizer ({MAX_TOKENIZER_BYTES})"),
        });
    }
    tokenizer_from_bytes(&std::fs::read(path).map_err(io)?, path)
}

/// [`load_tokenizer`] on the file's bytes; errors name `path`.
pub fn tokenizer_from_bytes(bytes: &[u8], path: &Path) -> Result<Tokenizer> {
    let bad = |message: String| Error::Format {
        path: path.into(),
        message,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    check_bpe_merges(&v["model"]).map_err(bad)?;
    match std::panic::catch_unwind(|| Tokenizer::from_bytes(bytes)) {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(bad(e.to_string())),
        Err(_) => Err(bad("the tokenizers library failed on this file".into())),
    }
}

/// Every BPE merge joins two tokens of the vocabulary into a third.
fn check_bpe_merges(model: &serde_json::Value) -> std::result::Result<(), String> {
    if model["type"].as_str() != Some("BPE") {
        return Ok(());
    }
    let Some(vocab) = model["vocab"].as_object() else {
        return Ok(()); // tokenizers reports a missing vocabulary itself
    };
    let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
    let tokens: HashSet<&str> = vocab.keys().map(String::as_str).collect();
    for (i, m) in model["merges"].as_array().into_iter().flatten().enumerate() {
        let (a, b) = match m {
            serde_json::Value::String(s) => match s.split_once(' ') {
                Some(p) => p,
                None => return Err(format!("merge {i} ({s:?}) is not two tokens")),
            },
            serde_json::Value::Array(p) if p.len() == 2 => match (p[0].as_str(), p[1].as_str()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(format!("merge {i} is not two strings")),
            },
            _ => return Err(format!("merge {i} is not two tokens")),
        };
        let joined = format!("{a}{}", b.strip_prefix(prefix).unwrap_or(b));
        for t in [a, b, joined.as_str()] {
            if !tokens.contains(t) {
                return Err(format!(
                    "merge {i} ({a:?} + {b:?}) needs {t:?}, which is not in the vocabulary"
                ));
            }
        }
    }
    Ok(())
}
