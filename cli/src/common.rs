//! Flags every command spells the same way, and what they turn into.

use std::path::PathBuf;

use anyhow::Context;
use birdbone_host::recipe::{Calibration, CalibrationMode, DeviceSpec, Dtype};
use birdbone_llama::{token_windows, Loaded};
use birdbone_tch::PluginRegistry;
use tch::{Device, Kind};

/// The torch device of a `--device` value; asking for CUDA where there is none is an error
/// before anything is loaded.
pub fn device(d: DeviceSpec) -> anyhow::Result<Device> {
    Ok(match d {
        DeviceSpec::Auto => Device::cuda_if_available(),
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => {
            let count = tch::Cuda::device_count() as usize;
            anyhow::ensure!(
                n < count,
                "--device cuda:{n}: this machine has {count} CUDA device(s)"
            );
            Device::Cuda(n)
        }
    })
}

/// The torch element type of a `--dtype` value.
pub fn kind(d: Dtype) -> Kind {
    match d {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::Bf16 => Kind::BFloat16,
    }
}

/// `--plugins`: where plugin libraries are looked for.
#[derive(clap::Args, Clone, Debug)]
pub struct PluginArgs {
    /// Plugin folder (repeatable). Default: the birdbone executable's folder, its plugins/,
    /// and BIRDBONE_PLUGIN_PATH.
    #[arg(long = "plugins", alias = "dir", value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

impl PluginArgs {
    /// The folders searched.
    pub fn folders(&self) -> Vec<PathBuf> {
        if self.dirs.is_empty() {
            PluginRegistry::default_dirs()
        } else {
            self.dirs.clone()
        }
    }

    /// The registry; an error naming the folders searched (and why files were refused) when
    /// no component loaded.
    pub fn registry(&self) -> anyhow::Result<PluginRegistry> {
        let dirs = self.folders();
        let reg = PluginRegistry::discover(&dirs);
        for r in reg.rejected() {
            crate::progress::note!(
                "warning: plugin {} rejected: {}",
                r.path.display(),
                r.reason
            );
        }
        if reg.components().next().is_none() {
            let rejected: Vec<String> = reg
                .rejected()
                .iter()
                .map(|r| format!("{} ({})", r.path.display(), r.reason))
                .collect();
            anyhow::bail!(
                "no plugin loaded; searched {}{}: build them (cargo build --release) or pass --plugins DIR",
                dirs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                if rejected.is_empty() {
                    String::new()
                } else {
                    format!("; refused: {}", rejected.join("; "))
                }
            );
        }
        Ok(reg)
    }
}

/// `--calibration-*`: the text run through the model before pruning (each overrides the
/// recipe's field).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CalibrationArgs {
    /// Calibration text: a file, or c4.utf8 / wiki.utf8 / tiny.utf8 [default: c4.utf8].
    #[arg(long, value_name = "FILE")]
    pub calibration_text: Option<String>,
    /// Calibration windows [default: 32].
    #[arg(long, value_name = "N")]
    pub calibration_windows: Option<usize>,
    /// Tokens per calibration window [default: 512].
    #[arg(long, value_name = "TOKENS")]
    pub calibration_length: Option<usize>,
    /// one-pass (the model sees the text once) or sequential (block by block, each block's
    /// statistics after the blocks before it were pruned) [default: one-pass].
    #[arg(long, value_enum, value_name = "MODE")]
    pub calibration_mode: Option<Mode>,
}

/// `--calibration-mode`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Mode {
    /// The whole model sees the text once.
    OnePass,
    /// Block by block.
    Sequential,
}

impl CalibrationArgs {
    /// Whether any flag was given.
    pub fn any(&self) -> bool {
        self.calibration_text.is_some()
            || self.calibration_windows.is_some()
            || self.calibration_length.is_some()
            || self.calibration_mode.is_some()
    }

    /// `base` with the given flags applied.
    pub fn apply(&self, base: Calibration) -> Calibration {
        Calibration {
            text: self.calibration_text.clone().unwrap_or(base.text),
            windows: self.calibration_windows.unwrap_or(base.windows),
            length: self.calibration_length.unwrap_or(base.length),
            batch: base.batch,
            mode: match self.calibration_mode {
                Some(Mode::OnePass) => CalibrationMode::OnePass,
                Some(Mode::Sequential) => CalibrationMode::Sequential,
                None => base.mode,
            },
        }
    }
}

/// `--text`, `--window`, `--windows`, `--batch`: the evaluation protocol's text. The whole text
/// is tokenized with the model's tokenizer (no special tokens) and cut into non-overlapping
/// windows; the first `--windows` are scored independently; perplexity = exp(mean next-token
/// negative log-likelihood over every predicted position).
#[derive(clap::Args, Clone, Debug)]
pub struct EvalArgs {
    /// Evaluation text: a file, or wiki.utf8 / c4.utf8 / tiny.utf8.
    #[arg(long, default_value = "wiki.utf8", value_name = "FILE")]
    pub text: String,
    /// Tokens per evaluation window.
    #[arg(long, default_value_t = 512, value_name = "TOKENS")]
    pub window: usize,
    /// Evaluation windows (the protocol uses 64).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub windows: usize,
    /// Windows per forward pass.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub batch: usize,
}

impl EvalArgs {
    /// Checks the numbers before anything is loaded.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.window >= 2 && self.windows >= 1 && self.batch >= 1,
            "--window must be at least 2, --windows and --batch at least 1"
        );
        Ok(())
    }

    /// The evaluation windows.
    pub fn windows_of(&self, m: &Loaded) -> anyhow::Result<Vec<Vec<i64>>> {
        text_windows(m, &self.text, self.window, self.windows)
    }
}

/// The first `n` windows of `len` tokens of a text file or bundled text.
pub fn text_windows(m: &Loaded, text: &str, len: usize, n: usize) -> anyhow::Result<Vec<Vec<i64>>> {
    let t = birdbone_llama::read_text(text).with_context(|| format!("text '{text}'"))?;
    Ok(token_windows(&m.tokenizer, &t, len, n)?)
}

/// Prints `value` as JSON on standard output.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// `--model`, `--device`, `--dtype` of the commands that run a model as it is.
#[derive(clap::Args, Clone, Debug)]
pub struct ModelArgs {
    /// The model: a folder, or a hub id org/name[@revision] in the local Hugging Face cache.
    #[arg(long)]
    pub model: String,
    /// auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// Element type to run in: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: Dtype,
}

impl ModelArgs {
    /// Loads the model and its tokenizer.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let device = device(self.device)?;
        let t = std::time::Instant::now();
        let m = Loaded::load(&self.model, device, kind(self.dtype))?;
        crate::progress::note!(
            "loaded {} onto {device:?} in {} ({:.1} s)",
            m.dir.display(),
            self.dtype,
            t.elapsed().as_secs_f64()
        );
        Ok(m)
    }
}

/// Perplexity with a progress bar.
pub fn perplexity(
    m: &Loaded,
    windows: &[Vec<i64>],
    batch: usize,
    label: &str,
) -> anyhow::Result<birdbone_llama::Perplexity> {
    let mut bar = crate::progress::Progress::new(label, windows.len() as u64, "windows");
    let p = birdbone_llama::perplexity_with(&m.model, windows, batch, &mut |d| bar.set(d as u64))?;
    bar.finish();
    Ok(p)
}

/// One-pass calibration with a progress bar.
pub fn calibrate(
    m: &Loaded,
    windows: &[Vec<i64>],
    batch: usize,
) -> anyhow::Result<(
    birdbone_tch::ActivationStats,
    birdbone_llama::CalibrationReport,
)> {
    let mut bar = crate::progress::Progress::new("calibration", windows.len() as u64, "windows");
    let (sums, cal) =
        birdbone_llama::collect_stats_with(&m.model, windows, batch, &mut |d| bar.set(d as u64))?;
    bar.finish();
    Ok((birdbone_tch::ActivationStats::from(sums), cal))
}

/// `--max-shard-size` and `--overwrite`: how a model folder is written.
#[derive(clap::Args, Clone, Debug)]
pub struct OutputArgs {
    /// Largest safetensors shard written, e.g. 5GB, 500MB [default: 5GB].
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<birdbone_host::recipe::ByteSize>,
    /// Replace a non-empty --out folder (swapped in only once the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
}
