//! GGUF (llama.cpp's Llama and Qwen2 layouts) to a Hugging Face model folder.
//!
//! Everything the file says is checked before anything is written: the hyperparameters against
//! each other and sane bounds, every tensor's name, layer and shape against them, every tensor
//! of every layer present once. A file that fails is an error naming the key or tensor.

use std::{collections::HashMap, path::Path};

use safetensors::{tensor::TensorView, Dtype};
use serde::Serialize;
use serde_json::json;

use crate::{
    file::{GgufFile, TensorInfo},
    tokenizer::{special_id, tokenizer_json},
    Error, Result,
};

/// What an import wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ImportSummary {
    /// The GGUF architecture read (`llama`, `qwen2`).
    pub architecture: String,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
    /// The `config.json` written.
    pub config: serde_json::Value,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
}

/// The architectures read, and how they differ.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Arch {
    /// Llama, and Mistral (which llama.cpp writes as `llama`): q/k rows permuted for llama.cpp's
    /// RoPE, no biases.
    Llama,
    /// Qwen2: biases on q/k/v, q/k rows as transformers has them.
    Qwen2,
}

impl Arch {
    fn of(name: &str) -> Result<Arch> {
        match name {
            "llama" => Ok(Arch::Llama),
            "qwen2" => Ok(Arch::Qwen2),
            other => Err(Error::Unsupported(format!(
                "general.architecture '{other}' is not supported (llama, qwen2)"
            ))),
        }
    }
}

/// Upper bounds no real model reaches; past them a header is corrupt, not large.
const MAX_LAYERS: u64 = 1 << 10;
const MAX_WIDTH: u64 = 1 << 20;
const MAX_HEADS: u64 = 1 << 12;

/// The hyperparameters, checked against each other.
#[derive(Debug)]
struct Hyper {
    layers: usize,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    ffn: usize,
    ctx: u64,
    eps: f64,
    theta: f64,
}

fn int(f: &GgufFile, key: &str, max: u64, default: Option<u64>) -> Result<usize> {
    let v = match f.get(key) {
        Some(v) => v
            .as_u64()
            .ok_or_else(|| Error::Unsupported(format!("{key} is {v:?}, not an integer")))?,
        None => {
            default.ok_or_else(|| Error::Unsupported(format!("the GGUF file has no '{key}'")))?
        }
    };
    if v == 0 || v > max {
        return Err(Error::Unsupported(format!(
            "{key} is {v}: expected 1 to {max}"
        )));
    }
    Ok(v as usize)
}

fn positive(f: &GgufFile, key: &str, default: f64) -> Result<f64> {
    let v = match f.get(key) {
        Some(v) => v
            .as_f64()
            .ok_or_else(|| Error::Unsupported(format!("{key} is {v:?}, not a number")))?,
        None => default,
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Unsupported(format!(
            "{key} is {v}: expected a finite number above 0"
        )));
    }
    Ok(v)
}

impl Hyper {
    fn read(f: &GgufFile, arch: &str) -> Result<Hyper> {
        let k = |s: &str| format!("{arch}.{s}");
        let layers = int(f, &k("block_count"), MAX_LAYERS, None)?;
        let hidden = int(f, &k("embedding_length"), MAX_WIDTH, None)?;
        let heads = int(f, &k("attention.head_count"), MAX_HEADS, None)?;
        let kv_heads = int(
            f,
            &k("attention.head_count_kv"),
            MAX_HEADS,
            Some(heads as u64),
        )?;
        let ffn = int(f, &k("feed_forward_length"), MAX_WIDTH * 8, None)?;
        let ctx = int(f, &k("context_length"), 1 << 24, Some(2048))? as u64;
        let default_head_dim = (hidden / heads).max(1) as u64;
        let head_dim = int(
            f,
            &k("attention.key_length"),
            MAX_WIDTH,
            Some(default_head_dim),
        )?;
        let value_dim = int(
            f,
            &k("attention.value_length"),
            MAX_WIDTH,
            Some(head_dim as u64),
        )?;
        if value_dim != head_dim {
            return Err(Error::Unsupported(format!(
                "{arch}.attention.value_length {value_dim} differs from the key length {head_dim}"
            )));
        }
        if f.get(&k("attention.key_length")).is_none() && hidden % heads != 0 {
            return Err(Error::Unsupported(format!(
                "{arch}.embedding_length {hidden} is not a multiple of {arch}.attention.head_count {heads}"
            )));
        }
        if heads % kv_heads != 0 {
            return Err(Error::Unsupported(format!(
                "{arch}.attention.head_count {heads} is not a multiple of {arch}.attention.head_count_kv {kv_heads}"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(Error::Unsupported(format!(
                "a head width of {head_dim} is odd: rotary embeddings need pairs"
            )));
        }
        if let Some(d) = f.get(&k("rope.dimension_count")) {
            if d.as_u64() != Some(head_dim as u64) {
                return Err(Error::Unsupported(format!(
                    "{arch}.rope.dimension_count is {d:?}: partial rotary embeddings are not implemented (head width {head_dim})"
                )));
            }
        }
        if let Some(s) = f.get(&k("rope.scaling.type")) {
            if s.as_str() != Some("none") {
                return Err(Error::Unsupported(format!(
                    "{arch}.rope.scaling.type {s:?} is not implemented by the importer"
                )));
            }
        }
        Ok(Hyper {
            layers,
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            ctx,
            eps: positive(f, &k("attention.layer_norm_rms_epsilon"), 1e-5)?,
            theta: positive(f, &k("rope.freq_base"), 10000.0)?,
        })
    }
}

/// A GGUF tensor's Hugging Face name, its layer (if any), and the shape it must have.
fn hf_name(
    arch: Arch,
    h: &Hyper,
    vocab: usize,
    gguf: &str,
) -> Option<(String, Option<usize>, Vec<u64>)> {
    let (hidden, q, kv, ffn) = (
        h.hidden as u64,
        (h.heads * h.head_dim) as u64,
        (h.kv_heads * h.head_dim) as u64,
        h.ffn as u64,
    );
    Some(match gguf {
        "token_embd.weight" => (
            "model.embed_tokens.weight".into(),
            None,
            vec![vocab as u64, hidden],
        ),
        "output_norm.weight" => ("model.norm.weight".into(), None, vec![hidden]),
        "output.weight" => ("lm_head.weight".into(), None, vec![vocab as u64, hidden]),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (index, tail) = rest.split_once('.')?;
            let layer: usize = index.parse().ok().filter(|l| *l < h.layers)?;
            if layer.to_string() != index {
                return None; // "blk.01." or "blk.+1." is not layer 1
            }
            let (module, shape) = match (tail, arch) {
                ("attn_norm.weight", _) => ("input_layernorm.weight", vec![hidden]),
                ("ffn_norm.weight", _) => ("post_attention_layernorm.weight", vec![hidden]),
                ("attn_q.weight", _) => ("self_attn.q_proj.weight", vec![q, hidden]),
                ("attn_k.weight", _) => ("self_attn.k_proj.weight", vec![kv, hidden]),
                ("attn_v.weight", _) => ("self_attn.v_proj.weight", vec![kv, hidden]),
                ("attn_output.weight", _) => ("self_attn.o_proj.weight", vec![hidden, q]),
                ("attn_q.bias", Arch::Qwen2) => ("self_attn.q_proj.bias", vec![q]),
                ("attn_k.bias", Arch::Qwen2) => ("self_attn.k_proj.bias", vec![kv]),
                ("attn_v.bias", Arch::Qwen2) => ("self_attn.v_proj.bias", vec![kv]),
                ("ffn_gate.weight", _) => ("mlp.gate_proj.weight", vec![ffn, hidden]),
                ("ffn_up.weight", _) => ("mlp.up_proj.weight", vec![ffn, hidden]),
                ("ffn_down.weight", _) => ("mlp.down_proj.weight", vec![hidden, ffn]),
                _ => return None,
            };
            (format!("model.layers.{layer}.{module}"), Some(layer), shape)
        }
    })
}

/// Tensors every layer has.
fn per_layer(arch: Arch) -> usize {
    match arch {
        Arch::Llama => 9,
        Arch::Qwen2 => 12,
    }
}

/// llama.cpp stores q/k projection rows interleaved for its RoPE (per head, rows `2i` and
/// `2i+1` of the GGUF tensor are rows `i` and `i + d/2` of the Hugging Face one). This puts
/// them back.
fn unpermute(w: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..heads {
        for i in 0..half {
            for (j, src_row) in [(i, 2 * i), (i + half, 2 * i + 1)] {
                let dst = (h * head_dim + j) * cols;
                let src = (h * head_dim + src_row) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    out
}

/// The plan of an import: every tensor's target name, checked, in file order.
fn plan<'f>(
    f: &'f GgufFile,
    arch: Arch,
    h: &Hyper,
    vocab: usize,
) -> Result<Vec<(&'f TensorInfo, String)>> {
    let mut out = Vec::with_capacity(f.tensors.len());
    let mut seen: HashMap<String, &str> = HashMap::new();
    let mut in_layer = vec![0usize; h.layers];
    for t in &f.tensors {
        if t.name == "rope_freqs.weight" {
            continue; // recomputed from rope theta
        }
        let Some((name, layer, shape)) = hf_name(arch, h, vocab, &t.name) else {
            return Err(Error::Unsupported(format!(
                "unexpected tensor '{}' in a {arch:?} GGUF with {} layers",
                t.name, h.layers
            )));
        };
        if t.shape != shape {
            return Err(Error::Unsupported(format!(
                "tensor '{}' has shape {:?}; the header's hyperparameters make it {shape:?}",
                t.name, t.shape
            )));
        }
        if let Some(first) = seen.insert(name.clone(), &t.name) {
            return Err(Error::Unsupported(format!(
                "tensor '{}' appears twice (first as '{first}')",
                t.name
            )));
        }
        if let Some(l) = layer {
            in_layer[l] += 1;
        }
        out.push((t, name));
    }
    for name in ["token_embd.weight", "output_norm.weight"] {
        if f.tensor(name).is_none() {
            return Err(Error::Unsupported(format!("the GGUF file has no '{name}'")));
        }
    }
    if let Some((l, n)) = in_layer
        .iter()
        .enumerate()
        .find(|(_, &n)| n != per_layer(arch))
    {
        return Err(Error::Unsupported(format!(
            "layer {l} has {n} tensors; a {arch:?} layer has {}",
            per_layer(arch)
        )));
    }
    Ok(out)
}

/// What an import writes, decided and checked before anything touches the disk.
pub struct ImportPlan<'f> {
    /// The GGUF architecture (`llama`, `qwen2`).
    pub architecture: String,
    arch: Arch,
    heads: usize,
    kv_heads: usize,
    /// Every tensor and its Hugging Face name, in file order.
    pub tensors: Vec<(&'f TensorInfo, String)>,
    /// The `config.json`.
    pub config: serde_json::Value,
    /// The `tokenizer.json`.
    pub tokenizer: serde_json::Value,
    /// The `tokenizer_config.json`.
    pub tokenizer_config: serde_json::Value,
    /// Rows of the embedding (the config's `vocab_size`).
    pub vocab_size: usize,
}

/// Checks everything an import reads from `f` (hyperparameters, tensors, tokenizer) and
/// decides what it writes.
pub fn plan_import(f: &GgufFile) -> Result<ImportPlan<'_>> {
    let arch_name = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let arch = Arch::of(&arch_name)?;
    let h = Hyper::read(f, &arch_name)?;
    let tok = tokenizer_json(f)?;
    let tokens = tok["model"]["vocab"].as_object().map_or(0, |v| v.len());
    let vocab = f
        .tensor("token_embd.weight")
        .and_then(|t| t.shape.first())
        .map_or(tokens as u64, |&rows| rows);
    if vocab < tokens as u64 {
        return Err(Error::Unsupported(format!(
            "token_embd.weight has {vocab} rows for {tokens} tokens"
        )));
    }
    let vocab = vocab as usize;
    let tensors = plan(f, arch, &h, vocab)?;
    let tied = f.tensor("output.weight").is_none();
    let bos = special_id(f, "bos_token_id", tokens)?;
    let eos = special_id(f, "eos_token_id", tokens)?;
    let unk = special_id(f, "unknown_token_id", tokens)?;
    let pad = special_id(f, "padding_token_id", tokens)?;
    let (architecture, model_type) = match arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let mut config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_size": h.hidden,
        "intermediate_size": h.ffn,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "num_key_value_heads": h.kv_heads,
        "head_dim": h.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": h.ctx,
        "rms_norm_eps": h.eps,
        "rope_theta": h.theta,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    });
    match arch {
        Arch::Llama => {
            config["attention_bias"] = json!(false);
            config["mlp_bias"] = json!(false);
        }
        Arch::Qwen2 => config["use_sliding_window"] = json!(false),
    }
    let name_of = |id: Option<u64>| {
        id.and_then(|i| {
            tok["model"]["vocab"].as_object().and_then(|v| {
                v.iter()
                    .find(|(_, n)| n.as_u64() == Some(i))
                    .map(|(s, _)| json!(s))
            })
        })
    };
    let mut tok_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": h.ctx,
        "clean_up_tokenization_spaces": false,
    });
    for (key, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(s) = name_of(id) {
            tok_config[key] = s;
        }
    }
    if let Some(t) = f.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        tok_config["chat_template"] = json!(t);
    }

    Ok(ImportPlan {
        architecture: arch_name,
        arch,
        heads: h.heads,
        kv_heads: h.kv_heads,
        tensors,
        config,
        tokenizer: tok,
        tokenizer_config: tok_config,
        vocab_size: vocab,
    })
}

/// One tensor as the Hugging Face layout has it: f32 values, q/k rows put back in order.
pub fn convert_tensor(
    f: &GgufFile,
    p: &ImportPlan,
    t: &TensorInfo,
    name: &str,
) -> Result<Vec<f32>> {
    let data = f.tensor_f32(t)?;
    if p.arch == Arch::Llama && (name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight"))
    {
        let heads = if name.contains("q_proj") {
            p.heads
        } else {
            p.kv_heads
        };
        return Ok(unpermute(
            &data,
            t.shape[0] as usize,
            t.shape[1] as usize,
            heads,
        ));
    }
    Ok(data)
}

/// Imports a Llama- or Qwen2-architecture GGUF checkpoint into `out_dir` as `config.json`,
/// `model.safetensors` (f32, dequantised), `tokenizer.json` and `tokenizer_config.json`.
/// Nothing is written unless the whole file checks out; `config.json` is written last, so a
/// folder without it is an unfinished import. (The `birdbone import-gguf` command writes into
/// a staging folder and puts it in place only when complete.)
pub fn import_llama(gguf: &Path, out_dir: &Path) -> Result<ImportSummary> {
    import_llama_with(gguf, out_dir, &mut |_, _| {})
}

/// [`import_llama`], calling `progress(tensors done, tensors in all)` after each tensor.
pub fn import_llama_with(
    gguf: &Path,
    out_dir: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<ImportSummary> {
    let f = GgufFile::open(gguf)?;
    let p = plan_import(&f)?;
    let mut arrays: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut parameters = 0u64;
    for (done, (t, name)) in p.tensors.iter().enumerate() {
        progress(done, p.tensors.len());
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let data = convert_tensor(&f, &p, t, name)?;
        parameters += data.len() as u64;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        arrays.push((name.clone(), shape, bytes));
    }
    progress(p.tensors.len(), p.tensors.len());

    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.into(),
        source,
    })?;
    let views: Vec<(String, TensorView<'_>)> = arrays
        .iter()
        .map(|(n, s, b)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b)
                    .map_err(|e| Error::Output(e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    meta.insert(
        "source".to_string(),
        format!(
            "birdbone import-gguf {}",
            gguf.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ),
    );
    let st_path = out_dir.join("model.safetensors");
    safetensors::serialize_to_file(views, Some(meta), &st_path)
        .map_err(|e| Error::Output(format!("{}: {e}", st_path.display())))?;
    let write = |name: &str, v: &serde_json::Value| {
        let p = out_dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).expect("json") + "\n")
            .map_err(|source| Error::Io { path: p, source })
    };
    write("tokenizer.json", &p.tokenizer)?;
    write("tokenizer_config.json", &p.tokenizer_config)?;
    // Prove the tokenizer file is one the tokenizers crate accepts before calling it done.
    let loaded = std::panic::catch_unwind(|| {
        tokenizers::Tokenizer::from_file(out_dir.join("tokenizer.json"))
    });
    match loaded {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            return Err(Error::Output(format!(
                "the rebuilt tokenizer.json does not load: {e}"
            )))
        }
        Err(_) => {
            return Err(Error::Output(
                "the tokenizers library failed on the rebuilt tokenizer.json".into(),
            ))
        }
    }
    write("config.json", &p.config)?;
    Ok(ImportSummary {
        architecture: p.architecture.clone(),
        tensors: arrays.len(),
        parameters,
        config: p.config.clone(),
        vocab_size: p.vocab_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(rows, cols)
        let (heads, d, cols) = (2usize, 4usize, 3usize);
        let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
        let mut permuted = vec![0f32; hf.len()];
        for h in 0..heads {
            for two in 0..2 {
                for i in 0..d / 2 {
                    let src = (h * d + two * d / 2 + i) * cols;
                    let dst = (h * d + i * 2 + two) * cols;
                    permuted[dst..dst + cols].copy_from_slice(&hf[src..src + cols]);
                }
            }
        }
        assert_eq!(unpermute(&permuted, heads * d, cols, heads), hf);
    }
}
