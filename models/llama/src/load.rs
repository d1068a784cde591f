use std::path::{Path, PathBuf};

use tch::{Device, Kind};
use tokenizers::Tokenizer;

use crate::{model::Llama, Error, LlamaConfig, Result};

/// The local Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `~/.cache/huggingface/hub` (as `huggingface_hub` decides).
pub fn hub_cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("hub");
    }
    hf_hub::Cache::default().path().clone()
}

/// Whether `spec` reads as a hub id `org/name[@revision]` rather than a path.
pub fn is_hub_id(spec: &str) -> bool {
    let id = spec.split_once('@').map_or(spec, |(id, _)| id);
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !p.starts_with('.')
        })
}

/// A model folder from a path, or from a hub id `org/name[@revision]` (a branch, tag or
/// commit; default `main`) looked up offline in the local Hugging Face cache
/// ([`hub_cache_dir`]). Nothing is downloaded.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    if !is_hub_id(spec) {
        return Err(Error::Invalid(format!(
            "model '{spec}': no such folder (nor a hub id org/name[@revision])"
        )));
    }
    let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let root = hub_cache_dir();
    let repo_dir = root.join(format!("models--{}", id.replace('/', "--")));
    let cache = hf_hub::Cache::new(root.clone());
    let repo = cache.repo(hf_hub::Repo::with_revision(
        id.to_string(),
        hf_hub::RepoType::Model,
        revision.to_string(),
    ));
    let snapshot = repo
        .get("config.json")
        .and_then(|c| c.parent().map(Path::to_path_buf))
        // A commit hash names its snapshot folder directly.
        .or_else(|| {
            let s = repo_dir.join("snapshots").join(revision);
            s.join("config.json").is_file().then_some(s)
        });
    snapshot.ok_or_else(|| {
        let known = |sub: &str| -> Vec<String> {
            std::fs::read_dir(repo_dir.join(sub))
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        let refs = known("refs");
        let there = if repo_dir.is_dir() {
            format!(
                "; cached revisions: refs {:?}, snapshots {:?}",
                refs,
                known("snapshots")
            )
        } else {
            String::new()
        };
        Error::Invalid(format!(
            "'{spec}' is not a folder, and revision '{revision}' of {id} with a config.json is not in the local Hugging Face cache {}{there} (HF_HUB_CACHE or HF_HOME choose it; Birdbone never downloads)",
            root.display()
        ))
    })
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
        let tokenizer = birdbone_model_folder::load_tokenizer(&tok_path)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
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
