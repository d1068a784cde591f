//! What an allocation costs on the Mistral-7B shape: the one-pass calibration Wanda needs
//! anyway, then the allocator's own work. For `birdbone` that is the layer load (every layer
//! pruned alone at the target and 0.1 above it, the calibration loss measured from that layer
//! on over the first 8 sequences, the layer put back), then the solve; `owl` reads Wanda's
//! scores only. Random bf16 weights and random tokens: the times are real, the allocation
//! itself means nothing.

use std::{collections::BTreeMap, time::Instant};

use birdbone_llama::{collect_stats, load_by_param};
use birdbone_tch::{ActivationStats, PassConfig, PassInputs, PluginRegistry, Pruner};

use crate::{reconstruct::random_model, sync, Args};

/// Sequences the layer load is measured on (as `birdbone prune` does).
const LOAD_SEQUENCES: usize = 8;

pub fn run(args: &Args, reg: &PluginRegistry, allocator: &str) -> anyhow::Result<()> {
    let (model, windows) = random_model(args)?;
    let row: BTreeMap<String, String> = [("scope".to_string(), "row".to_string())].into();
    let mut pruner = Pruner::new(reg, "wanda", &BTreeMap::new(), "layerwise", &row)?;
    pruner.set_allocator(reg, allocator, &BTreeMap::new())?;
    let cfg = PassConfig {
        sparsity: args.sparsity,
        ..Default::default()
    };
    sync();
    let t = Instant::now();
    let (sums, _) = collect_stats(&model, &windows, args.calib_batch)?;
    let stats = ActivationStats::from(sums);
    sync();
    let calibration_s = t.elapsed().as_secs_f64();

    let vs = model.var_store();
    let t = Instant::now();
    let load = if pruner.allocator_needs_load() {
        let levels = [args.sparsity, (args.sparsity + 0.1).min(1.0)];
        let (_, by_param) = load_by_param::<anyhow::Error>(
            &model,
            &mut pruner,
            &windows[..windows.len().min(LOAD_SEQUENCES)],
            args.calib_batch,
            &levels,
            &cfg,
            &stats,
            &mut |_| {},
        )?;
        Some(by_param)
    } else {
        None
    };
    sync();
    let load_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let a = pruner.allocate(
        vs,
        &cfg,
        PassInputs {
            stats: Some(&stats),
            load: load.as_ref(),
            ..Default::default()
        },
    )?;
    sync();
    let solve_s = t.elapsed().as_secs_f64();
    let (lo, hi) = a.sparsity_range();
    let out = serde_json::json!({
        "allocator": allocator,
        "sparsity": args.sparsity,
        "layers": args.layers,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "calib_batch": args.calib_batch,
        "calibration_s": calibration_s,
        "load_s": load_s,
        "load_sequences": if load.is_some() { LOAD_SEQUENCES.min(windows.len()) } else { 0 },
        "allocate_s": solve_s,
        "allocation_s": load_s + solve_s,
        "pruned": a.pruned,
        "total": a.total,
        "param_sparsity_min": lo,
        "param_sparsity_max": hi,
    });
    println!("{out}");
    Ok(())
}
