//! `--sparsegpt`: a whole sequential pass of SparseGPT (or `--method wanda`) on a
//! Mistral-7B-shaped model with random bf16 weights, calibrated on random tokens (`--samples`
//! sequences of `--seq-len`), on one GPU, timed in two parts as bench/sparsegpt_reference.py
//! times the reference: *calibration* (the forward passes through each block and the Hessian
//! or statistics accumulation, the second forward that feeds the next block included) and
//! *solve* (each block's pass: Cholesky, the OBS sweeps, the lazy updates, the commit and its
//! rollback journal). Peak device memory beyond the model is polled from the driver (libtorch
//! keeps what it allocated in its cache, so this is the peak it reserved).
//!
//! `--agree DIR` instead runs the solver on the reference's dumped layer (its bf16 weight and
//! fp32 Hessian, bench/sparsegpt_reference.py --dump) and prints how often the masks agree.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use birdbone_llama::{for_each_block_calibrated, Llama};
use birdbone_tch::{ActivationStats, PassConfig, PassInputs, PluginRegistry, Pruner};
use tch::{Device, Kind, Tensor};

use crate::{sync, Args};

/// The Mistral-7B-shaped model (`--layers` blocks, N(0, 0.02) bf16 weights on the GPU) and
/// `--samples` random calibration sequences of `--seq-len` tokens.
pub(crate) fn random_model(args: &Args) -> anyhow::Result<(Llama, Vec<Vec<i64>>)> {
    let model = Llama::random(
        Llama::mistral_7b_shape(args.layers)?,
        Device::Cuda(0),
        Kind::BFloat16,
        0.02,
    )?;
    tch::manual_seed(0);
    let ids = Tensor::randint(
        32000,
        [args.samples as i64, args.seq_len as i64],
        (Kind::Int64, Device::Cpu),
    );
    let windows = (0..args.samples as i64)
        .map(|i| Vec::<i64>::try_from(&ids.get(i)))
        .collect::<Result<_, _>>()?;
    Ok((model, windows))
}

fn pattern(args: &Args) -> anyhow::Result<Option<(u32, u32)>> {
    args.pattern
        .as_deref()
        .map(|p| {
            let (n, m) = p
                .split_once(':')
                .ok_or_else(|| anyhow::anyhow!("--pattern N:M"))?;
            Ok((n.parse()?, m.parse()?))
        })
        .transpose()
}

fn pruner(args: &Args, reg: &PluginRegistry) -> anyhow::Result<Pruner> {
    let (scorer, strategy, st): (&str, &str, &[(&str, &str)]) = match args.method.as_str() {
        "sparsegpt" => ("magnitude", "sparsegpt", &[]),
        "wanda" if args.pattern.is_some() => ("wanda", "nm", &[]),
        "wanda" => ("wanda", "layerwise", &[("scope", "row")]),
        other => anyhow::bail!("--method sparsegpt or wanda, not '{other}'"),
    };
    let st: BTreeMap<String, String> = st
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(Pruner::new(reg, scorer, &BTreeMap::new(), strategy, &st)?)
}

/// Polls the driver's free memory until stopped; returns the least seen.
fn poll_free(
    gpu: Arc<birdbone_cuda::Gpu>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut least = usize::MAX;
        while !stop.load(Ordering::Relaxed) {
            if let Ok((free, _)) = gpu.mem_info() {
                least = least.min(free);
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        least
    })
}

pub fn run(args: &Args, reg: &PluginRegistry, gpu: Arc<birdbone_cuda::Gpu>) -> anyhow::Result<()> {
    if let Some(dir) = &args.agree {
        return agree(args, reg, dir);
    }
    let t = Instant::now();
    let (model, windows) = random_model(args)?;
    sync();
    let construct = t.elapsed().as_secs_f64();
    let mut pruner = pruner(args, reg)?;
    pruner.set_undo(birdbone_tch::UndoPolicy {
        rollback: !args.no_rollback,
        journal: if args.journal_on_device {
            birdbone_tch::JournalPlace::Device
        } else {
            birdbone_tch::JournalPlace::Host
        },
        ..Default::default()
    })?;
    let hessians = pruner.needs_hessians();
    let cfg = PassConfig {
        sparsity: args.sparsity,
        nm: pattern(args)?,
        ..Default::default()
    };
    let (free_before, _) = gpu.mem_info()?;
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_free(gpu.clone(), stop.clone());
    let (mut solve, mut journal) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let mut pass = pruner.sequential(&cfg);
    let cal = for_each_block_calibrated(
        &model,
        &windows,
        args.calib_batch,
        hessians,
        |_, names, got| {
            let stats = ActivationStats::from_parts(got.sums, got.hessians);
            sync();
            let t = Instant::now();
            let report = pass.block(model.var_store(), names, &stats)?;
            sync();
            solve.push(t.elapsed().as_secs_f64());
            journal.push(report.map_or(0.0, |r| r.journal_seconds));
            Ok::<_, anyhow::Error>(())
        },
    )?;
    let (report, _) = pass.finish()?;
    sync();
    let total = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let least = poller.join().expect("poller");
    let solve_total: f64 = solve.iter().sum();
    let out = serde_json::json!({
        "method": args.method,
        "sparsity": args.sparsity,
        "pattern": args.pattern,
        "layers": args.layers,
        "samples": args.samples,
        "seq_len": args.seq_len,
        "calib_batch": args.calib_batch,
        "rollback": !args.no_rollback,
        "journal_on_device": args.journal_on_device,
        "construct_s": construct,
        "end_to_end_s": total,
        "calib_s_total": total - solve_total,
        "solve_s_total": solve_total,
        "solve_s_per_block": solve,
        "journal_s_per_block": journal,
        "tokens": cal.tokens,
        "pruned_fraction": report.sparsity,
        "peak_extra_gib": free_before.saturating_sub(least) as f64 / (1u64 << 30) as f64,
    });
    println!("{out}");
    Ok(())
}

/// The solver on the reference's dumped layers: mask agreement on the same fp32 Hessian.
fn agree(args: &Args, reg: &PluginRegistry, dir: &std::path::Path) -> anyhow::Result<()> {
    let dev = Device::Cuda(0);
    for name in ["self_attn.q_proj", "mlp.down_proj"] {
        let path = dir.join(format!("layer0.{name}.safetensors"));
        let t: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)?.into_iter().collect();
        let w = t["weight"].to_device(dev);
        let h = t["hessian"].to_device(dev).to_kind(Kind::Float);
        let reference_pruned = t["keep_mask"].to_device(dev).eq(0);
        let full = format!("model.layers.0.{name}.weight");
        let params = vec![(full.clone(), w.shallow_clone())];
        let mut hs = BTreeMap::new();
        hs.insert(full, (h, args.samples as u64 * args.seq_len as u64, 0u64));
        let stats = ActivationStats::from_parts(BTreeMap::new(), hs);
        let cfg = PassConfig {
            sparsity: args.sparsity,
            nm: pattern(args)?,
            ..Default::default()
        };
        let t0 = Instant::now();
        pruner(args, reg)?.run(
            &params,
            &cfg,
            PassInputs {
                stats: Some(&stats),
                ..Default::default()
            },
        )?;
        sync();
        let secs = t0.elapsed().as_secs_f64();
        let ours = w.eq(0.0);
        let agree = ours
            .eq_tensor(&reference_pruned)
            .to_kind(Kind::Double)
            .mean(Kind::Double)
            .double_value(&[]);
        let ref_w = t["pruned_weight"].to_device(dev).to_kind(Kind::Float);
        let rel = (w.to_kind(Kind::Float) - &ref_w).norm().double_value(&[])
            / ref_w.norm().double_value(&[]);
        println!(
            "{}",
            serde_json::json!({"layer": name, "mask_agreement": agree, "relative_weight_difference": rel, "solve_s": secs})
        );
    }
    Ok(())
}
