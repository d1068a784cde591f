//! Benchmark of Birdbone's pruning paths on the linear weights of a Mistral-7B-shaped decoder
//! (32 layers of q 4096x4096, k/v 1024x4096, o 4096x4096, gate/up 14336x4096, down 4096x14336:
//! 6.98 B bf16 parameters), resident on the GPU, pruned in place to 50%.
//!
//! Each path runs through the plugins (the product) and directly on the host's machinery (to
//! measure the plugin boundary), several times after a warm-up, on a fresh copy of the weights
//! each time; the two alternate run by run, so the machine's drift (up to a millisecond within
//! one call on the H200s measured) reaches both alike instead of biasing their ratio. The table
//! gives the median, the effective bandwidth of the ideal algorithm (one read to select, one
//! read and write to apply: 6 bytes per bf16 weight) against a device copy measured in the same
//! run, and an exactness check.
//!
//! `--memory` instead measures peak extra device memory per path; run it with
//! `PYTORCH_NO_CUDA_MEMORY_CACHING=1` so freed memory goes back to the driver, where a polling
//! thread sees it (scripts/gpu-run.sh bench does both).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Instant,
};

use anyhow::{bail, Context};
use birdbone_tch::{
    direct, ActivationStats, ParamFilter, PassConfig, PassInputs, PluginRegistry, Pruner,
    UndoPolicy,
};

mod allocation;
mod reconstruct;
mod rollback;
use clap::Parser;
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(about = "Benchmark Birdbone's pruning paths on 7B-shaped weights on a GPU")]
struct Args {
    /// Decoder layers (32 is Mistral-7B).
    #[arg(long, default_value_t = 32)]
    layers: usize,
    /// Timed runs per path (after one warm-up).
    #[arg(long, default_value_t = 9)]
    runs: usize,
    /// Folder with the plugin .so files.
    #[arg(long, default_value = "target/release")]
    plugins: PathBuf,
    /// Measure peak extra memory instead of time (run with PYTORCH_NO_CUDA_MEMORY_CACHING=1).
    #[arg(long)]
    memory: bool,
    /// Paths to run (global, wanda-row, nm24, layerwise, global-masks).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "global,wanda-row,nm24,layerwise,global-masks"
    )]
    paths: Vec<String>,
    /// Measure what rollback and undo cost a pass instead (see rollback.rs).
    #[arg(long)]
    rollback: bool,
    /// With --rollback: cpu runs on a real checkpoint's Linear weights (--model) on the CPU.
    #[arg(long, default_value = "cuda")]
    device: String,
    /// With --rollback --device cpu: the model folder.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Time a whole sequential SparseGPT (or --method wanda) pass on a Mistral-7B-shaped model
    /// with random weights and random calibration tokens (see reconstruct.rs).
    #[arg(long)]
    sparsegpt: bool,
    /// With --sparsegpt: sparsegpt or wanda.
    #[arg(long, default_value = "sparsegpt")]
    method: String,
    /// With --sparsegpt: the fraction pruned (ignored with --pattern).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// With --sparsegpt: an N:M pattern, N kept of every M (e.g. 2:4).
    #[arg(long)]
    pattern: Option<String>,
    /// With --sparsegpt: calibration sequences.
    #[arg(long, default_value_t = 128)]
    samples: usize,
    /// With --sparsegpt: tokens per calibration sequence.
    #[arg(long, default_value_t = 2048)]
    seq_len: usize,
    /// With --sparsegpt: sequences per forward pass.
    #[arg(long, default_value_t = 8)]
    calib_batch: usize,
    /// With --sparsegpt: no rollback journal (a failed block then leaves earlier ones written).
    #[arg(long)]
    no_rollback: bool,
    /// With --sparsegpt: keep the rollback journal on the GPU instead of pinned host memory.
    #[arg(long)]
    journal_on_device: bool,
    /// With --sparsegpt: compare masks with the reference's dump in this folder instead.
    #[arg(long)]
    agree: Option<PathBuf>,
    /// Time an allocation (`birdbone` or `owl`) over Wanda on the Mistral-7B-shaped model of
    /// --sparsegpt instead: the one-pass calibration, the layer load, the allocator (see
    /// allocation.rs). Uses --sparsity, --samples, --seq-len and --calib-batch.
    #[arg(long)]
    allocate: Option<String>,
    /// Only compile the kernels for this architecture (e.g. sm_90) into the kernel cache
    /// (BIRDBONE_KERNEL_CACHE) and exit; needs NVRTC, not a GPU.
    #[arg(long)]
    precompile: Option<String>,
}

const SHAPES: [(&str, i64, i64); 7] = [
    ("self_attn.q_proj", 4096, 4096),
    ("self_attn.k_proj", 1024, 4096),
    ("self_attn.v_proj", 1024, 4096),
    ("self_attn.o_proj", 4096, 4096),
    ("mlp.gate_proj", 14336, 4096),
    ("mlp.up_proj", 14336, 4096),
    ("mlp.down_proj", 4096, 14336),
];

fn sync() {
    tch::Cuda::synchronize(0);
}

/// N(0, 0.02) with four large outliers per row (as LLM weights have), never exactly zero.
fn build(layers: usize) -> Vec<(String, Tensor)> {
    let _g = tch::no_grad_guard();
    let dev = Device::Cuda(0);
    let mut out = Vec::new();
    for l in 0..layers {
        for (name, o, i) in SHAPES {
            let w = Tensor::randn([o, i], (Kind::Float, dev)) * 0.02;
            let idx = Tensor::randint(i, [o, 4], (Kind::Int64, dev));
            let sign = Tensor::randint(2, [o, 4], (Kind::Float, dev)) * 2.0 - 1.0;
            let big = (Tensor::rand([o, 4], (Kind::Float, dev)) * 0.5 + 0.5) * sign;
            let w = w.scatter(1, &idx, &big).to_kind(Kind::BFloat16);
            let w = w.where_self(
                &w.ne(0.0),
                &Tensor::from(1e-6f32).to_kind(Kind::BFloat16).to_device(dev),
            );
            out.push((format!("model.layers.{l}.{name}.weight"), w));
        }
    }
    sync();
    out
}

fn restore(params: &[(String, Tensor)], pristine: &[Tensor]) {
    let _g = tch::no_grad_guard();
    for ((_, w), p) in params.iter().zip(pristine) {
        w.shallow_clone().copy_(p);
    }
    sync();
}

fn copy_bandwidth() -> f64 {
    let x = Tensor::randint(255, [1i64 << 31], (Kind::Uint8, Device::Cuda(0)));
    let mut y = x.empty_like();
    for _ in 0..3 {
        y.copy_(&x);
    }
    sync();
    let t = Instant::now();
    for _ in 0..10 {
        y.copy_(&x);
    }
    sync();
    2.0 * x.numel() as f64 / (t.elapsed().as_secs_f64() / 10.0) / 1e12
}

#[derive(Clone, Copy, PartialEq)]
enum Check {
    Global,
    PerTensor,
    PerRow,
    Nm,
}

fn exact(params: &[(String, Tensor)], check: Check) -> bool {
    let _g = tch::no_grad_guard();
    let half = |n: i64| (0.5 * n as f64).round() as i64;
    match check {
        Check::Global => {
            let total: i64 = params.iter().map(|(_, w)| w.numel() as i64).sum();
            let zeros: i64 = params
                .iter()
                .map(|(_, w)| w.eq(0.0).sum(Kind::Int64).int64_value(&[]))
                .sum();
            zeros == half(total)
        }
        Check::PerTensor => params
            .iter()
            .all(|(_, w)| w.eq(0.0).sum(Kind::Int64).int64_value(&[]) == half(w.numel() as i64)),
        Check::PerRow => params.iter().all(|(_, w)| {
            let per_row = w
                .eq(0.0)
                .sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64);
            per_row
                .ne(half(w.size()[1]))
                .sum(Kind::Int64)
                .int64_value(&[])
                == 0
        }),
        Check::Nm => params.iter().all(|(_, w)| {
            let g =
                w.eq(0.0)
                    .reshape([-1, 4])
                    .sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64);
            g.ne(2).sum(Kind::Int64).int64_value(&[]) == 0
        }),
    }
}

struct Path {
    name: &'static str,
    scorer: &'static str,
    strategy: &'static str,
    settings: Vec<(&'static str, &'static str)>,
    nm: Option<(u32, u32)>,
    keep_masks: bool,
    check: Check,
}

fn paths() -> Vec<Path> {
    let p = |name,
             scorer,
             strategy,
             settings: Vec<(&'static str, &'static str)>,
             nm,
             keep_masks,
             check| Path {
        name,
        scorer,
        strategy,
        settings,
        nm,
        keep_masks,
        check,
    };
    vec![
        p(
            "global",
            "magnitude",
            "global",
            vec![],
            None,
            false,
            Check::Global,
        ),
        p(
            "wanda-row",
            "wanda",
            "layerwise",
            vec![("scope", "row")],
            None,
            false,
            Check::PerRow,
        ),
        p(
            "nm24",
            "magnitude",
            "nm",
            vec![],
            Some((2, 4)),
            false,
            Check::Nm,
        ),
        p(
            "layerwise",
            "magnitude",
            "layerwise",
            vec![],
            None,
            false,
            Check::PerTensor,
        ),
        p(
            "global-masks",
            "magnitude",
            "global",
            vec![],
            None,
            true,
            Check::Global,
        ),
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    birdbone_host::init_logging();
    let args = Args::parse();
    if let Some(sm) = &args.precompile {
        let t = Instant::now();
        let path = birdbone_cuda::precompile(sm)?;
        eprintln!(
            "kernels for {sm} in {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            path.display()
        );
        return Ok(());
    }
    if args.rollback && args.device == "cpu" {
        return rollback_on_cpu(&args);
    }
    if !tch::Cuda::is_available() {
        bail!("no CUDA device: this benchmark runs on a GPU machine (scripts/gpu-run.sh bench)");
    }
    if args.runs == 0 && !args.memory {
        bail!("--runs must be at least 1 (the table gives medians of the timed runs)");
    }
    let gpu = birdbone_cuda::gpu(0)?;
    let kb = gpu.kernel_build();
    eprintln!(
        "kernels for {}: {:.2} s ({})",
        kb.target,
        kb.seconds,
        if kb.from_cache {
            "from the on-disk cache"
        } else {
            "compiled with NVRTC, now cached"
        }
    );
    let reg = builtin_plugins(&args.plugins)?;
    if let Some(allocator) = &args.allocate {
        return allocation::run(&args, &reg, allocator);
    }
    if args.sparsegpt {
        return reconstruct::run(&args, &reg, gpu);
    }

    let started = Instant::now();
    let params = build(args.layers);
    let n: u64 = params.iter().map(|(_, w)| w.numel() as u64).sum();
    let pristine: Vec<Tensor> = if args.memory {
        Vec::new()
    } else {
        params.iter().map(|(_, w)| w.copy()).collect()
    };
    sync();
    let scales: Vec<Tensor> = params
        .iter()
        .map(|(_, w)| (Tensor::randn([w.size()[1]], (Kind::Float, Device::Cuda(0)))).exp())
        .collect();
    let mut stats = ActivationStats::new();
    for ((name, _), s) in params.iter().zip(&scales) {
        stats.insert(name.clone(), s.square() * 512.0, 512);
    }
    let sq_norms: Vec<Tensor> = scales.iter().map(|s| (s.square() * 512.0).sqrt()).collect();
    println!(
        "# {} ({} SMs), {} layers: {:.3} B bf16 parameters ({:.2} GiB), built in {:.1} s",
        gpu.name(),
        gpu.sms(),
        args.layers,
        n as f64 / 1e9,
        n as f64 * 2.0 / (1u64 << 30) as f64,
        started.elapsed().as_secs_f64()
    );

    if args.memory {
        return memory(&args, &reg, &params, &stats, gpu);
    }
    if args.rollback {
        drop(pristine);
        let d2h = rollback::d2h_bandwidth();
        return rollback::run(&reg, &params, &stats, args.runs, &sync, Some(d2h));
    }
    let copy = copy_bandwidth();
    println!("# device copy: {copy:.2} TB/s (read + write), measured in this run");
    let ideal_bytes = 6.0 * n as f64; // one read to select, one read and write to apply (bf16)
    println!(
        "# ideal traffic: {:.2} GB per path; floor at copy speed {:.2} ms\n",
        ideal_bytes / 1e9,
        ideal_bytes / (copy * 1e12) * 1e3
    );
    println!(
        "| path | via | median ms | min ms | effective TB/s | % of copy | exact | vs direct |\n| --- | --- | ---: | ---: | ---: | ---: | :---: | ---: |"
    );
    for path in paths()
        .into_iter()
        .filter(|p| args.paths.iter().any(|a| a == p.name))
    {
        let settings: BTreeMap<String, String> = path
            .settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pruner = Pruner::new(
            &reg,
            path.scorer,
            &BTreeMap::new(),
            path.strategy,
            &settings,
        )?;
        // The pass itself; what rollback adds is measured on its own (--rollback).
        pruner.set_undo(UndoPolicy {
            rollback: false,
            ..Default::default()
        })?;
        let cfg = PassConfig {
            sparsity: 0.5,
            nm: path.nm,
            keep_masks: path.keep_masks,
            filter: ParamFilter::default(),
            allocation: None,
        };
        let inputs = PassInputs {
            stats: Some(&stats),
            ..Default::default()
        };
        let mut phases = Vec::new();
        let mut run_plugin = || -> anyhow::Result<f64> {
            restore(&params, &pristine);
            let t = Instant::now();
            let (report, masks) = pruner.run(&params, &cfg, inputs)?;
            sync();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            drop(masks);
            anyhow::ensure!(
                report.pruned * 2 == n,
                "{}: pruned {} of {n}",
                path.name,
                report.pruned
            );
            phases.push((report.plan_seconds * 1e3, report.commit_seconds * 1e3));
            Ok(ms)
        };
        run_plugin().with_context(|| format!("warm-up of {}", path.name))?;
        let direct_path = match path.name {
            "global" | "global-masks" => direct::DirectPath::GlobalMagnitude,
            "wanda-row" => direct::DirectPath::PerRowScaled(&sq_norms),
            "nm24" => direct::DirectPath::Nm(2, 4),
            _ => direct::DirectPath::LayerwiseMagnitude,
        };
        let run_direct = || -> anyhow::Result<f64> {
            restore(&params, &pristine);
            let t = Instant::now();
            let pruned = direct::prune(
                &params,
                direct_path_clone(&direct_path),
                0.5,
                path.keep_masks,
            )?;
            sync();
            anyhow::ensure!(
                pruned * 2 == n,
                "direct {}: pruned {pruned} of {n}",
                path.name
            );
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        run_direct()?;
        let (mut plugin, mut direct) = (Vec::new(), Vec::new());
        let mut plugin_exact = false;
        for run in 0..args.runs {
            plugin.push(run_plugin()?);
            if run + 1 == args.runs {
                plugin_exact = exact(&params, path.check);
            }
            direct.push(run_direct()?);
        }
        let direct_exact = exact(&params, path.check);
        let plan_ms = median(phases.iter().skip(1).map(|p| p.0).collect());
        let commit_ms = median(phases.iter().skip(1).map(|p| p.1).collect());
        eprintln!(
            "{}: plan {plan_ms:.2} ms, commit {commit_ms:.2} ms (plugin path, medians)",
            path.name
        );
        let (pm, dm) = (median(plugin.clone()), median(direct.clone()));
        for (via, m, min, ex, rel) in [
            (
                "plugins",
                pm,
                plugin.iter().cloned().fold(f64::INFINITY, f64::min),
                plugin_exact,
                format!("{:+.1}%", 100.0 * (pm / dm - 1.0)),
            ),
            (
                "direct",
                dm,
                direct.iter().cloned().fold(f64::INFINITY, f64::min),
                direct_exact,
                String::new(),
            ),
        ] {
            let tbs = ideal_bytes / (m / 1e3) / 1e12;
            println!(
                "| {} | {via} | {m:.2} | {min:.2} | {tbs:.2} | {:.0}% | {} | {rel} |",
                path.name,
                100.0 * tbs / copy,
                if ex { "yes" } else { "NO" }
            );
        }
    }
    Ok(())
}

/// The built-in plugins the paths use, from `dir`; a refused one is an error.
fn builtin_plugins(dir: &std::path::Path) -> anyhow::Result<PluginRegistry> {
    let mut reg = PluginRegistry::new();
    let files: Vec<PathBuf> = [
        "magnitude",
        "global",
        "layerwise",
        "nm",
        "wanda",
        "sparsegpt",
        "allocators",
    ]
    .iter()
    .map(|n| dir.join(format!("libbirdbone_plugin_{n}.so")))
    .collect();
    let s = reg.load_paths(&files);
    if !s.rejected.is_empty() {
        bail!("plugins rejected: {:?}", s.rejected);
    }
    Ok(reg)
}

/// `--rollback --device cpu --model DIR`: the rollback cost on a real checkpoint, on the CPU.
fn rollback_on_cpu(args: &Args) -> anyhow::Result<()> {
    let dir = args
        .model
        .as_ref()
        .context("--rollback --device cpu needs --model DIR (a safetensors model folder)")?;
    let reg = builtin_plugins(&args.plugins)?;
    let all = birdbone_llama::checkpoint::load_dir(dir, None, Device::Cpu)?;
    let params = birdbone_tch::selected(&all, &ParamFilter::default())?;
    let mut stats = ActivationStats::new();
    for (name, w) in &params {
        stats.insert(
            name.clone(),
            Tensor::rand([w.size()[1]], (Kind::Float, Device::Cpu)) + 0.5,
            512,
        );
    }
    println!(
        "# {} on the CPU ({} threads)",
        dir.display(),
        tch::get_num_threads()
    );
    rollback::run(&reg, &params, &stats, args.runs, &|| {}, None)
}

fn direct_path_clone<'a>(p: &direct::DirectPath<'a>) -> direct::DirectPath<'a> {
    match p {
        direct::DirectPath::GlobalMagnitude => direct::DirectPath::GlobalMagnitude,
        direct::DirectPath::LayerwiseMagnitude => direct::DirectPath::LayerwiseMagnitude,
        direct::DirectPath::PerRowScaled(s) => direct::DirectPath::PerRowScaled(s),
        direct::DirectPath::Nm(n, m) => direct::DirectPath::Nm(*n, *m),
    }
}

fn memory(
    args: &Args,
    reg: &PluginRegistry,
    params: &[(String, Tensor)],
    stats: &ActivationStats,
    gpu: Arc<birdbone_cuda::Gpu>,
) -> anyhow::Result<()> {
    if std::env::var("PYTORCH_NO_CUDA_MEMORY_CACHING").as_deref() != Ok("1") {
        bail!("--memory needs PYTORCH_NO_CUDA_MEMORY_CACHING=1, so freed memory returns to the driver where it can be seen");
    }
    println!("| path | peak extra device memory MiB | masks kept |\n| --- | ---: | :---: |");
    for path in paths()
        .into_iter()
        .filter(|p| args.paths.iter().any(|a| a == p.name))
    {
        let settings: BTreeMap<String, String> = path
            .settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut pruner = Pruner::new(reg, path.scorer, &BTreeMap::new(), path.strategy, &settings)?;
        let cfg = PassConfig {
            sparsity: 0.5,
            nm: path.nm,
            keep_masks: path.keep_masks,
            filter: ParamFilter::default(),
            allocation: None,
        };
        // Warm-up: compiles the kernels (their code lives outside the allocator) and loads modules.
        let (_, m) = pruner.run(
            params,
            &cfg,
            PassInputs {
                stats: Some(stats),
                ..Default::default()
            },
        )?;
        drop(m);
        sync();
        let (free_before, _) = gpu.mem_info()?;
        let stop = Arc::new(AtomicBool::new(false));
        let poller = {
            let (stop, gpu) = (stop.clone(), gpu.clone());
            std::thread::spawn(move || {
                let mut min_free = usize::MAX;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((free, _)) = gpu.mem_info() {
                        min_free = min_free.min(free);
                    }
                }
                min_free
            })
        };
        let (_, masks) = pruner.run(
            params,
            &cfg,
            PassInputs {
                stats: Some(stats),
                ..Default::default()
            },
        )?;
        sync();
        let (free_after, _) = gpu.mem_info()?;
        stop.store(true, Ordering::Relaxed);
        let min_free = poller.join().expect("poller").min(free_after);
        drop(masks);
        println!(
            "| {} | {:.1} | {} |",
            path.name,
            (free_before.saturating_sub(min_free)) as f64 / (1u64 << 20) as f64,
            if path.keep_masks { "yes" } else { "no" }
        );
    }
    Ok(())
}
