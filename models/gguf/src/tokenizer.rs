//! Rebuilding a Hugging Face `tokenizer.json` from the vocabulary and merges inside a GGUF file.

use serde_json::{json, Map, Value as Json};

use crate::{file::GgufFile, Error, Result};

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

fn pre_tokenizer(pre: &str) -> Result<Json> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    Ok(match pre {
        // SmolLM (and StarCoder, whose tokenizer it reuses) split digits one by one, then apply
        // GPT-2's byte-level split.
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level,
        ]}),
        "gpt-2" | "gpt2" | "default" => byte_level,
        other => {
            return Err(Error::Unsupported(format!(
                "tokenizer pre-tokenization '{other}' is not supported (known: smollm, starcoder, gpt-2, default)"
            )))
        }
    })
}

/// The `tokenizer.json` of a GGUF file's byte-level BPE tokenizer (`tokenizer.ggml.model` =
/// `gpt2`): vocabulary, merges, control tokens as special added tokens, and the pre-tokenizer
/// named by `tokenizer.ggml.pre`.
pub fn tokenizer_json(f: &GgufFile) -> Result<Json> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if model != "gpt2" {
        return Err(Error::Unsupported(format!(
            "tokenizer model '{model}' is not supported (only byte-level BPE, 'gpt2')"
        )));
    }
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .ok_or_else(|| Error::Unsupported("the GGUF file has no tokenizer.ggml.tokens".into()))?;
    let merges = f
        .get("tokenizer.ggml.merges")
        .and_then(|v| v.as_array())
        .unwrap_or(&[]);
    let types = f
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array());
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        let s = t
            .as_str()
            .ok_or_else(|| Error::Unsupported(format!("token {id} is not a string")))?;
        vocab.insert(s.to_string(), json!(id));
        let ty = types
            .and_then(|ts| ts.get(id))
            .and_then(|v| v.as_u64())
            .unwrap_or(1);
        if ty == CONTROL || ty == USER_DEFINED {
            added.push(json!({
                "id": id, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": ty == CONTROL,
            }));
        }
    }
    let merges: Vec<Json> = merges
        .iter()
        .filter_map(|m| m.as_str())
        .map(|m| json!(m))
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(pre)?,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}
