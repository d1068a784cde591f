//! GGUF (llama.cpp's Llama layout) to a Hugging Face model folder.

use std::{collections::HashMap, path::Path};

use safetensors::{tensor::TensorView, Dtype};
use serde::Serialize;
use serde_json::json;

use crate::{file::GgufFile, tokenizer::tokenizer_json, Error, Result};

/// What an import wrote.
#[derive(Clone, Debug, Serialize)]
pub struct ImportSummary {
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
    /// The `config.json` written.
    pub config: serde_json::Value,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
}

fn meta_u64(f: &GgufFile, key: &str) -> Result<u64> {
    f.get(key)
        .and_then(|v| v.as_u64())
        .ok_or_else(|| Error::Unsupported(format!("the GGUF file has no integer '{key}'")))
}

fn hf_name(gguf: &str) -> Option<String> {
    Some(match gguf {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf.strip_prefix("blk.")?;
            let (layer, tail) = rest.split_once('.')?;
            let module = match tail {
                "attn_norm.weight" => "input_layernorm.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "attn_q.bias" => "self_attn.q_proj.bias",
                "attn_k.bias" => "self_attn.k_proj.bias",
                "attn_v.bias" => "self_attn.v_proj.bias",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                _ => return None,
            };
            format!("model.layers.{layer}.{module}")
        }
    })
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

/// Imports a Llama-architecture GGUF checkpoint into `out_dir` as `config.json`,
/// `model.safetensors` (f32, dequantised) and `tokenizer.json`.
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
    let arch = f
        .get("general.architecture")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if arch != "llama" {
        return Err(Error::Unsupported(format!(
            "architecture '{arch}' (this importer reads 'llama')"
        )));
    }
    let k = |s: &str| format!("llama.{s}");
    let layers = meta_u64(&f, &k("block_count"))? as usize;
    let hidden = meta_u64(&f, &k("embedding_length"))? as usize;
    let heads = meta_u64(&f, &k("attention.head_count"))? as usize;
    let kv_heads = f
        .get(&k("attention.head_count_kv"))
        .and_then(|v| v.as_u64())
        .unwrap_or(heads as u64) as usize;
    let ffn = meta_u64(&f, &k("feed_forward_length"))?;
    let ctx = f
        .get(&k("context_length"))
        .and_then(|v| v.as_u64())
        .unwrap_or(2048);
    let eps = f
        .get(&k("attention.layer_norm_rms_epsilon"))
        .and_then(|v| v.as_f64())
        .unwrap_or(1e-5);
    let theta = f
        .get(&k("rope.freq_base"))
        .and_then(|v| v.as_f64())
        .unwrap_or(10000.0);
    let tok = tokenizer_json(&f)?;
    let vocab_size = tok["model"]["vocab"].as_object().map_or(0, |v| v.len());
    let tied = f.tensor("output.weight").is_none();
    let bos = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u64());
    let eos = f
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_u64());

    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io {
        path: out_dir.into(),
        source,
    })?;
    let mut arrays: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut parameters = 0u64;
    for (done, t) in f.tensors.iter().enumerate() {
        progress(done, f.tensors.len());
        let Some(name) = hf_name(&t.name) else {
            if t.name == "rope_freqs.weight" {
                continue; // recomputed from rope theta
            }
            return Err(Error::Unsupported(format!(
                "unexpected tensor '{}' in a llama GGUF",
                t.name
            )));
        };
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let mut data = f.tensor_f32(t)?;
        if name.ends_with("q_proj.weight") || name.ends_with("k_proj.weight") {
            let h = if name.contains("q_proj") {
                heads
            } else {
                kv_heads
            };
            data = unpermute(&data, shape[0], shape[1], h);
        }
        parameters += data.len() as u64;
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        arrays.push((name, shape, bytes));
    }
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

    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden / heads,
        "hidden_act": "silu",
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    });
    let write = |name: &str, v: &serde_json::Value| {
        let p = out_dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).expect("json"))
            .map_err(|source| Error::Io { path: p, source })
    };
    write("config.json", &config)?;
    write("tokenizer.json", &tok)?;
    // Prove the tokenizer file is one the tokenizers crate accepts before calling it done.
    tokenizers::Tokenizer::from_file(out_dir.join("tokenizer.json"))
        .map_err(|e| Error::Output(format!("the rebuilt tokenizer.json does not load: {e}")))?;
    Ok(ImportSummary {
        tensors: arrays.len(),
        parameters,
        config,
        vocab_size,
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
