use birdbone_llama::{token_windows, Loaded};
use birdbone_tch::PluginRegistry;
use tch::Kind;

pub use birdbone_llama::parse_device;

/// `f32`, `f16` or `bf16`.
pub fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "f16" | "float16" => Kind::Half,
        "bf16" | "bfloat16" => Kind::BFloat16,
        other => anyhow::bail!("unknown dtype '{other}' (f32, f16, bf16)"),
    })
}

/// What a perplexity experiment on the real model needs (`demo`, `study`): the model, the
/// evaluation and calibration text, and the plugins.
#[derive(clap::Args)]
pub struct Experiment {
    /// Model folder, or a cached hub id.
    #[arg(long)]
    pub model: String,
    /// Evaluation windows of 512 tokens of wiki.utf8 (the protocol uses 64).
    #[arg(long, default_value_t = 64)]
    pub windows: usize,
    /// Calibration windows of 512 tokens of c4.utf8.
    #[arg(long, default_value_t = 32)]
    pub calibration: usize,
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Plugin folder (repeatable). Default: the birdbone executable's folder and its plugins/.
    #[arg(long = "plugins")]
    pub plugin_dirs: Vec<std::path::PathBuf>,
}

/// Window length of the evaluation and calibration text, in tokens.
const WINDOW: usize = 512;

impl Experiment {
    pub fn load(&self) -> anyhow::Result<Loaded> {
        Ok(Loaded::load(
            &self.model,
            parse_device(&self.device)?,
            parse_kind(&self.dtype)?,
        )?)
    }

    pub fn registry(&self) -> PluginRegistry {
        PluginRegistry::discover(&crate::plugins_cmd::plugin_dirs(&self.plugin_dirs))
    }

    /// The evaluation windows (wiki.utf8).
    pub fn eval_windows(&self, m: &Loaded) -> anyhow::Result<Vec<Vec<i64>>> {
        windows_of(m, "wiki.utf8", self.windows)
    }

    /// The calibration windows (c4.utf8).
    pub fn calibration_windows(&self, m: &Loaded) -> anyhow::Result<Vec<Vec<i64>>> {
        windows_of(m, "c4.utf8", self.calibration)
    }
}

fn windows_of(m: &Loaded, text: &str, n: usize) -> anyhow::Result<Vec<Vec<i64>>> {
    Ok(token_windows(
        &m.tokenizer,
        &birdbone_llama::read_text(text)?,
        WINDOW,
        n,
    )?)
}
