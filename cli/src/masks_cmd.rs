//! `birdbone apply-masks`: a saved mask file applied to a model folder, written as a new one.

use std::path::PathBuf;

use anyhow::Context;
use birdbone_host::recipe::{ByteSize, Dtype};
use birdbone_llama::{checkpoint, resolve_model_dir};
use birdbone_tch::MaskSet;
use serde_json::json;

use crate::{
    common::{self, OutputArgs},
    output,
    progress::note,
};

#[derive(clap::Args)]
pub struct Args {
    /// The model: a folder, or a hub id org/name[@revision] in the local Hugging Face cache.
    #[arg(long)]
    model: String,
    /// The mask file (masks.safetensors, as `birdbone prune` writes it).
    #[arg(long, value_name = "FILE")]
    masks: PathBuf,
    /// The folder to write.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Element type to write: f32, f16, bf16 [default: as stored].
    #[arg(long)]
    dtype: Option<Dtype>,
    #[command(flatten)]
    written: OutputArgs,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dir = resolve_model_dir(&a.model)?;
    output::check_target(&a.out, &dir, a.written.overwrite)?;
    let masks = MaskSet::load(&a.masks, tch::Device::Cpu)
        .with_context(|| format!("mask file {}", a.masks.display()))?;
    let entries = checkpoint::read_header(&dir)?;
    // Every mask must name a tensor of the model with its shape: checked before loading.
    for (name, m) in masks.iter() {
        let e = entries.iter().find(|e| e.name == name).with_context(|| {
            format!(
                "the mask file has a mask for '{name}', which {} does not have",
                dir.display()
            )
        })?;
        anyhow::ensure!(
            e.shape == m.shape,
            "mask for '{name}' is {:?}; the model's tensor is {:?}",
            m.shape,
            e.shape
        );
    }
    let kind = a.dtype.map(common::kind);
    let tensors = checkpoint::load_dir(&dir, kind, tch::Device::Cpu)?;
    let zeroed = masks.apply(&tensors)?;
    let (pruned, total) = masks.counts()?;
    note!(
        "applied {} masks: {zeroed} weights set to zero",
        masks.len()
    );
    let saved = output::write(
        &a.out,
        &output::ModelOut {
            source: &dir,
            tensors: &tensors,
            dtype: a.dtype,
            max_shard_bytes: a
                .written
                .max_shard_size
                .unwrap_or(ByteSize::DEFAULT_SHARD)
                .0,
            masks: Some(&masks),
            recipe: None,
            report: None,
            allocation: None,
            provenance: json!({
                "tool": "birdbone",
                "version": env!("CARGO_PKG_VERSION"),
                "source": {"model": a.model, "folder": dir},
                "masks": a.masks,
            }),
        },
    )?;
    if a.json {
        return common::print_json(&json!({
            "command": "apply-masks",
            "model": a.model,
            "out": a.out,
            "masks": masks.len(),
            "pruned": pruned,
            "total": total,
            "files": saved.files,
        }));
    }
    println!(
        "{}: {} masks applied ({pruned} of {total} weights pruned, {:.2}%); written to {}",
        a.model,
        masks.len(),
        100.0 * pruned as f64 / total.max(1) as f64,
        a.out.display()
    );
    Ok(())
}
