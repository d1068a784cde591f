use std::path::{Path, PathBuf};

use tch::{Device, Kind};
use tokenizers::Tokenizer;

use crate::{config::LlamaConfig, model::Llama, Error, Result};

/// A model folder from a path, or from a hub id (`org/name`) looked up offline in the local
/// Hugging Face cache (`HF_HOME`, `HF_HUB_CACHE`). Nothing is downloaded.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if spec.split('/').count() == 2 && !spec.starts_with('.') && !spec.starts_with('/') {
        let cache = hf_hub::Cache::from_env();
        let repo = cache.model(spec.to_string());
        if let Some(config) = repo.get("config.json") {
            return Ok(config.parent().expect("a snapshot folder").to_path_buf());
        }
        return Err(Error::Invalid(format!(
            "'{spec}' is not a folder and is not in the local Hugging Face cache ({}); Birdbone never downloads",
            cache.path().display()
        )));
    }
    Err(Error::Invalid(format!("model '{spec}': no such folder")))
}

/// A model with its tokenizer.
pub struct Loaded {
    /// The model.
    pub model: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// The folder it came from.
    pub dir: PathBuf,
}

impl Loaded {
    /// Loads `config.json`, the safetensors checkpoint (single or sharded) and `tokenizer.json`
    /// from a folder or a cached hub id, in `kind` on `device`.
    pub fn load(spec: &str, device: Device, kind: Kind) -> Result<Loaded> {
        let dir = resolve_model_dir(spec)?;
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let tensors = crate::checkpoint::load_dir(&dir, None, Device::Cpu)?;
        let model = Llama::from_tensors(config, tensors, device, kind)?;
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        Ok(Loaded {
            model,
            tokenizer,
            dir,
        })
    }

    /// Token ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }

    /// Text of token ids.
    pub fn decode(&self, ids: &[i64]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.tokenizer
            .decode(&ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
}

/// `auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`: the `--device` flag of the tools.
pub fn parse_device(s: &str) -> Result<Device> {
    Ok(match s {
        "auto" => Device::cuda_if_available(),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        s if s.starts_with("cuda:") => Device::Cuda(
            s[5..]
                .parse()
                .map_err(|_| Error::Invalid(format!("bad device ordinal in '{s}'")))?,
        ),
        other => {
            return Err(Error::Invalid(format!(
                "unknown device '{other}' (auto, cpu, cuda, cuda:N)"
            )))
        }
    })
}
