//! Rebuilding a Hugging Face `tokenizer.json` from the vocabulary inside a GGUF file, the way
//! transformers' own GGUF loader builds it (its output is the reference the tests compare
//! token ids against):
//! - `tokenizer.ggml.model` = `gpt2`: byte-level BPE from the tokens and merges, split as
//!   `tokenizer.ggml.pre` names;
//! - `llama`: a SentencePiece vocabulary (Llama-2, Mistral): BPE with byte fallback, merges
//!   recovered from the tokens' scores, `▁` for spaces.

use std::collections::HashMap;

use serde_json::{json, Map, Value as Json};

use crate::{
    file::{GgufFile, Value},
    Error, Result,
};

/// GGUF token types (llama.cpp's `llama_token_type`).
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// GPT-2's split, with each digit on its own (Qwen2).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// As Qwen2's with digits in threes (Llama 3).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn pre_tokenizer(pre: &str) -> Result<Json> {
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]})
    };
    Ok(match pre {
        // SmolLM (and StarCoder, whose tokenizer it reuses) split digits one by one, then apply
        // GPT-2's byte-level split.
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level,
        ]}),
        "gpt-2" | "gpt2" | "default" => byte_level,
        "qwen2" | "deepseek-r1-qwen" => split(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" => split(LLAMA3_SPLIT),
        other => {
            return Err(Error::Unsupported(format!(
                "tokenizer.ggml.pre '{other}' is not supported (known: smollm, starcoder, gpt-2, default, qwen2, deepseek-r1-qwen, llama-bpe, llama3, smaug-bpe)"
            )))
        }
    })
}

/// The vocabulary, checked: strings, no token twice, and the per-token arrays as long as it.
struct Vocab<'a> {
    tokens: Vec<&'a str>,
    types: Vec<u64>,
    scores: Option<Vec<f32>>,
}

fn array<'a>(f: &'a GgufFile, key: &str) -> Result<Option<&'a [Value]>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_array()
            .map(Some)
            .ok_or_else(|| Error::Unsupported(format!("{key} is not an array"))),
    }
}

fn vocab(f: &GgufFile) -> Result<Vocab<'_>> {
    let raw = array(f, "tokenizer.ggml.tokens")?
        .ok_or_else(|| Error::Unsupported("the GGUF file has no tokenizer.ggml.tokens".into()))?;
    if raw.is_empty() {
        return Err(Error::Unsupported("tokenizer.ggml.tokens is empty".into()));
    }
    let mut seen = HashMap::with_capacity(raw.len());
    let mut tokens = Vec::with_capacity(raw.len());
    for (id, t) in raw.iter().enumerate() {
        let s = t.as_str().ok_or_else(|| {
            Error::Unsupported(format!("tokenizer.ggml.tokens[{id}] is not a string"))
        })?;
        if let Some(first) = seen.insert(s, id) {
            return Err(Error::Unsupported(format!(
                "tokenizer.ggml.tokens[{id}] repeats token {first} ({s:?})"
            )));
        }
        tokens.push(s);
    }
    let per_token = |key: &str| -> Result<Option<&[Value]>> {
        let a = array(f, key)?;
        if let Some(a) = a.filter(|a| a.len() != tokens.len()) {
            return Err(Error::Unsupported(format!(
                "{key} has {} entries for {} tokens",
                a.len(),
                tokens.len()
            )));
        }
        Ok(a)
    };
    let types = match per_token("tokenizer.ggml.token_type")? {
        Some(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64().ok_or_else(|| {
                    Error::Unsupported(format!("tokenizer.ggml.token_type[{i}] is not an integer"))
                })
            })
            .collect::<Result<_>>()?,
        None => vec![1; tokens.len()],
    };
    let scores = per_token("tokenizer.ggml.scores")?
        .map(|a| {
            a.iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_f64()
                        .filter(|x| !x.is_nan())
                        .map(|x| x as f32)
                        .ok_or_else(|| {
                            Error::Unsupported(format!(
                                "tokenizer.ggml.scores[{i}] is not a number"
                            ))
                        })
                })
                .collect::<Result<Vec<f32>>>()
        })
        .transpose()?;
    Ok(Vocab {
        tokens,
        types,
        scores,
    })
}

/// A special token's id from `tokenizer.ggml.<key>`, checked against the vocabulary.
pub(crate) fn special_id(f: &GgufFile, key: &str, vocab_len: usize) -> Result<Option<u64>> {
    let full = format!("tokenizer.ggml.{key}");
    match f.get(&full) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(id) if id < vocab_len as u64 => Ok(Some(id)),
            _ => Err(Error::Unsupported(format!(
                "{full} is {v:?}, not a token id below {vocab_len}"
            ))),
        },
    }
}

fn flag(f: &GgufFile, key: &str, default: bool) -> Result<bool> {
    match f.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(Error::Unsupported(format!("{key} is {v:?}, not a boolean"))),
    }
}

fn added(id: usize, content: &str, special: bool) -> Json {
    json!({
        "id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
        "normalized": false, "special": special,
    })
}

/// The `tokenizer.json` of a GGUF file's tokenizer, and the number of tokens in it.
pub fn tokenizer_json(f: &GgufFile) -> Result<Json> {
    let model = f
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let v = vocab(f)?;
    match model {
        "gpt2" => byte_level(f, &v),
        "llama" => sentencepiece(f, &v),
        other => Err(Error::Unsupported(format!(
            "tokenizer.ggml.model '{other}' is not supported (gpt2: byte-level BPE; llama: SentencePiece BPE)"
        ))),
    }
}

/// The file's merges, each two tokens of the vocabulary whose join is a token too (what BPE
/// needs; tokenizers 0.23 panics on some merges that break this, so they are refused here).
fn merges_of(f: &GgufFile, v: &Vocab) -> Result<Option<Vec<Json>>> {
    let Some(raw) = array(f, "tokenizer.ggml.merges")? else {
        return Ok(None);
    };
    let known: std::collections::HashSet<&str> = v.tokens.iter().copied().collect();
    raw.iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = m.as_str().and_then(|m| m.split_once(' ')).ok_or_else(|| {
                Error::Unsupported(format!(
                    "tokenizer.ggml.merges[{i}] is not two tokens separated by a space"
                ))
            })?;
            let joined = format!("{}{}", pair.0, pair.1);
            if let Some(t) = [pair.0, pair.1, &joined]
                .into_iter()
                .find(|t| !known.contains(t))
            {
                return Err(Error::Unsupported(format!(
                    "tokenizer.ggml.merges[{i}] needs {t:?}, which is not a token"
                )));
            }
            Ok(json!([pair.0, pair.1]))
        })
        .collect::<Result<_>>()
        .map(Some)
}

fn vocab_map(v: &Vocab) -> Map<String, Json> {
    v.tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.to_string(), json!(id)))
        .collect()
}

/// Byte-level BPE (`gpt2`): vocabulary, merges, control tokens as special added tokens, and the
/// pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level(f: &GgufFile, v: &Vocab) -> Result<Json> {
    let pre = f
        .get("tokenizer.ggml.pre")
        .and_then(|v| v.as_str())
        .unwrap_or("default");
    let added: Vec<Json> = v
        .tokens
        .iter()
        .zip(&v.types)
        .enumerate()
        .filter(|(_, (_, &ty))| ty == CONTROL || ty == USER_DEFINED)
        .map(|(id, (s, &ty))| added(id, s, ty == CONTROL))
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
            "vocab": vocab_map(v), "merges": merges_of(f, v)?.unwrap_or_default(),
        },
    }))
}

/// SentencePiece BPE (`llama`): byte fallback (`<0x41>` pieces), `▁` for spaces and before the
/// text, merges from the file or recovered from the scores; the unknown and control tokens
/// special; BOS added in front when `tokenizer.ggml.add_bos_token` (default true) says so.
fn sentencepiece(f: &GgufFile, v: &Vocab) -> Result<Json> {
    let merges = match merges_of(f, v)? {
        Some(m) => m,
        None => recovered_merges(v)
            .into_iter()
            .map(|(l, r)| json!([l, r]))
            .collect(),
    };
    let unk = special_id(f, "unknown_token_id", v.tokens.len())?
        .map(|id| v.tokens[id as usize])
        .or_else(|| v.tokens.iter().copied().find(|&t| t == "<unk>"));
    let prefix = flag(f, "tokenizer.ggml.add_space_prefix", true)?;
    let mut added_tokens = vec![];
    for (id, (s, &ty)) in v.tokens.iter().zip(&v.types).enumerate() {
        if ty == CONTROL || ty == UNKNOWN || ty == USER_DEFINED {
            added_tokens.push(added(id, s, ty != USER_DEFINED));
        }
    }
    let bos = special_id(f, "bos_token_id", v.tokens.len())?;
    let add_bos = flag(f, "tokenizer.ggml.add_bos_token", true)?;
    let post = match bos.filter(|_| add_bos) {
        Some(id) => {
            let b = v.tokens[id as usize];
            let special = |type_id: u32| json!({"SpecialToken": {"id": b, "type_id": type_id}});
            let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
            json!({
                "type": "TemplateProcessing",
                "single": [special(0), seq("A", 0)],
                "pair": [special(0), seq("A", 0), special(1), seq("B", 1)],
                "special_tokens": {b: {"id": b, "ids": [id], "tokens": [b]}},
            })
        }
        None => Json::Null,
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u{2581}",
                          "prepend_scheme": if prefix { "first" } else { "never" }, "split": false},
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_map(v), "merges": merges,
        },
    }))
}

/// The merges a SentencePiece vocabulary implies: every way of cutting a token into two tokens
/// of the vocabulary, ranked by the whole token's score (best first; then by the pieces'
/// lengths, longer first), as transformers' `generate_merges` ranks them. Without scores the
/// token's id ranks it (lower first).
fn recovered_merges<'a>(v: &Vocab<'a>) -> Vec<(&'a str, &'a str)> {
    let ids: HashMap<&str, usize> = v.tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(&str, &str, f32, usize, usize)> = vec![];
    for (id, &token) in v.tokens.iter().enumerate() {
        let score = v.scores.as_ref().map_or(id as f32, |s| s[id]);
        let start = merges.len();
        for (cut, _) in token.char_indices().skip(1) {
            let (l, r) = token.split_at(cut);
            if ids.contains_key(l) && ids.contains_key(r) {
                merges.push((l, r, score, l.chars().count(), r.chars().count()));
            }
        }
        merges[start..].sort_by_key(|m| (ids[m.0], ids[m.1]));
    }
    // A stable sort, so equal keys keep the order above (Python's sorted, reverse or not).
    if v.scores.is_some() {
        merges.sort_by(|a, b| b.2.total_cmp(&a.2).then(b.3.cmp(&a.3)).then(b.4.cmp(&a.4)));
    } else {
        merges.sort_by(|a, b| a.2.total_cmp(&b.2).then(a.3.cmp(&b.3)).then(a.4.cmp(&b.4)));
    }
    merges.into_iter().map(|m| (m.0, m.1)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_recovered_best_score_first() {
        let v = Vocab {
            tokens: vec!["a", "b", "c", "ab", "abc", "bc"],
            types: vec![1; 6],
            scores: Some(vec![0.0, 0.0, 0.0, -1.0, -3.0, -2.0]),
        };
        // "ab" (-1), then "bc" (-2), then "abc" (-3) cut both ways, longer left piece first.
        assert_eq!(
            recovered_merges(&v),
            vec![("a", "b"), ("b", "c"), ("ab", "c"), ("a", "bc")]
        );
    }
}
