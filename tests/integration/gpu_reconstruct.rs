//! CUDA paths of the methods that reconstruct (ABI 1.1), against the CPU path. They return
//! early where no GPU is present (CI); scripts/gpu-run.sh runs them on the GPU machine.

use std::collections::BTreeMap;

use birdbone_host_api::NmPattern;
use birdbone_llama::for_each_block_calibrated;
use birdbone_tch::{
    obs_sweep, undo::inject_commit_failure, ActivationStats, JournalPlace, PassConfig, PassInputs,
    Pruner, UndoPolicy,
};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

use crate::{
    checks::*,
    reconstruct::{block_weights, calibration, model_on, sparsegpt},
    undo::{assert_bitwise, bitwise},
};

const GPU: Device = Device::Cuda(0);

/// An upper-triangular factor like SparseGPT's: the Cholesky factor of a random SPD inverse.
fn factor(b: i64) -> Tensor {
    let x = Tensor::randn([4 * b, b], (Kind::Float, Device::Cpu));
    let h = x.transpose(0, 1).matmul(&x) + Tensor::eye(b, (Kind::Float, Device::Cpu)) * 0.1;
    h.linalg_cholesky(false)
        .cholesky_inverse(false)
        .linalg_cholesky(true)
        .contiguous()
}

/// The sweep kernel does the CPU's operations in the CPU's order: the same bits, on a strided
/// view of a wider weight, unstructured and N:M.
#[test]
fn cuda_obs_sweep_matches_the_cpu_bit_for_bit() {
    if !cuda_or_skip("cuda_obs_sweep_matches_the_cpu_bit_for_bit") {
        return;
    }
    let _g = tch::no_grad_guard();
    tch::manual_seed(11);
    for (rows, b, nm) in [
        (1000i64, 128i64, None),
        (333, 128, Some(NmPattern { n: 2, m: 4 })),
        (64, 96, Some(NmPattern { n: 4, m: 8 })),
        (70, 37, None),
    ] {
        let wide = Tensor::randn([rows, b + 50], (Kind::Float, Device::Cpu));
        let hinv = factor(b);
        let prune = Tensor::rand([rows, b], (Kind::Float, Device::Cpu)).lt(0.5);
        let (w_cpu, w_gpu) = (wide.copy(), wide.to_device(GPU));
        let (p_cpu, p_gpu) = (prune.copy(), prune.to_device(GPU));
        let e_cpu = obs_sweep(&w_cpu.narrow(1, 10, b), &hinv, &p_cpu, nm).unwrap();
        let e_gpu = obs_sweep(&w_gpu.narrow(1, 10, b), &hinv.to_device(GPU), &p_gpu, nm).unwrap();
        let what = format!("{rows}x{b} {nm:?}");
        assert!(
            bitwise(&w_cpu, &w_gpu.to_device(Device::Cpu)),
            "{what}: weights"
        );
        assert!(p_cpu.equal(&p_gpu.to_device(Device::Cpu)), "{what}: masks");
        assert!(
            bitwise(&e_cpu, &e_gpu.to_device(Device::Cpu)),
            "{what}: errors"
        );
        if let Some(p) = nm {
            let kept = w_cpu
                .narrow(1, 10, b)
                .ne(0.0)
                .view([-1, p.m as i64])
                .sum_dim_intlist(1, false, Kind::Int64);
            assert!(
                kept.le(p.n as i64).all().int64_value(&[]) == 1,
                "{what}: N:M"
            );
        }
        // The columns outside the view are untouched.
        assert!(bitwise(&w_cpu.narrow(1, 0, 10), &wide.narrow(1, 0, 10)));
    }
}

/// A whole SparseGPT pass on CUDA (cuSOLVER's factors, the sweep kernel, cuBLAS updates)
/// against the CPU (LAPACK, the CPU sweep), on real weights in f32 and bf16: masks agree on
/// 99.9% of weights and the values within rounding.
#[test]
fn cuda_sparsegpt_prunes_like_the_cpu() {
    if !cuda_or_skip("cuda_sparsegpt_prunes_like_the_cpu") {
        return;
    }
    let _g = tch::no_grad_guard();
    tch::manual_seed(5);
    let originals: Vec<(String, Tensor)> = real_weights(Kind::Float)
        .into_iter()
        .filter(|(n, _)| n.starts_with("model.layers.1."))
        .collect();
    assert_eq!(originals.len(), 7);
    let mut hs = BTreeMap::new();
    for (g, (n, w)) in originals.iter().enumerate() {
        let cols = w.size()[1];
        let x = Tensor::randn([3 * cols, cols], (Kind::Float, Device::Cpu))
            * (Tensor::rand([cols], (Kind::Float, Device::Cpu)) * 3.0 + 0.1).unsqueeze(0);
        hs.insert(
            n.clone(),
            (x.transpose(0, 1).matmul(&x), 3 * cols as u64, g as u64),
        );
    }
    let stats_on = |d: Device| {
        ActivationStats::from_parts(
            BTreeMap::new(),
            hs.iter()
                .map(|(n, (h, t, g))| (n.clone(), (h.to_device(d), *t, *g)))
                .collect(),
        )
    };
    let (cpu_stats, gpu_stats) = (stats_on(Device::Cpu), stats_on(GPU));
    for (kind, nm) in [
        (Kind::Float, None),
        (Kind::BFloat16, None),
        (Kind::BFloat16, Some((2u32, 4u32))),
    ] {
        let run = |device: Device, stats: &ActivationStats| {
            let params: Vec<(String, Tensor)> = originals
                .iter()
                .map(|(n, w)| (n.clone(), w.to_kind(kind).to_device(device)))
                .collect();
            let mut pruner = Pruner::new(
                &builtin_registry(),
                "magnitude",
                &BTreeMap::new(),
                "sparsegpt",
                &BTreeMap::new(),
            )
            .unwrap();
            let cfg = PassConfig {
                sparsity: 0.5,
                nm,
                ..Default::default()
            };
            let inputs = PassInputs {
                stats: Some(stats),
                ..Default::default()
            };
            let (report, _) = pruner.run(&params, &cfg, inputs).unwrap();
            assert_eq!(report.pruned * 2, report.total);
            params
        };
        let cpu = run(Device::Cpu, &cpu_stats);
        let gpu = run(GPU, &gpu_stats);
        for ((name, c), (_, g)) in cpu.iter().zip(&gpu) {
            let g = g.to_device(Device::Cpu);
            assert_eq!(g.kind(), kind);
            let agree = c
                .eq(0.0)
                .eq_tensor(&g.eq(0.0))
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[]);
            assert!(
                agree >= 0.999,
                "{name} {kind:?} {nm:?}: masks agree on {agree}"
            );
            let rel = (c.to_kind(Kind::Float) - g.to_kind(Kind::Float))
                .norm()
                .double_value(&[])
                / c.to_kind(Kind::Float).norm().double_value(&[]);
            assert!(
                rel < 0.02,
                "{name} {kind:?} {nm:?}: values differ by {rel} (relative)"
            );
            eprintln!("{name} {kind:?} {nm:?}: masks agree on {agree:.6}, values within {rel:.2e}");
        }
    }
}

/// Half-precision activations are accumulated into XᵀX by one tensor-core GEMM in f32: the same
/// matrix as widening them first, within f32 accumulation-order rounding.
#[test]
fn cuda_hessians_of_bf16_activations_match_an_f32_gram() {
    if !cuda_or_skip("cuda_hessians_of_bf16_activations_match_an_f32_gram") {
        return;
    }
    let _g = tch::no_grad_guard();
    let config = birdbone_llama::LlamaConfig::from_json(&serde_json::json!({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 1000, "rms_norm_eps": 1e-5, "tie_word_embeddings": false,
    }))
    .unwrap();
    tch::manual_seed(2);
    let model = birdbone_llama::Llama::random(config, GPU, Kind::BFloat16, 0.05).unwrap();
    let windows: Vec<Vec<i64>> = (0..4)
        .map(|i| (0..256).map(|t| (i * 37 + t * 11) % 1000).collect())
        .collect();
    let (got, _) = birdbone_llama::calibrate(&model, &windows, 2, true, &mut |_| {}).unwrap();
    assert!(!got.hessians.is_empty());
    let (h, tokens, _) = &got.hessians["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(*tokens, 1024);
    assert_eq!(h.kind(), Kind::Float);
    // Symmetric, positive diagonal, and its diagonal is the Wanda statistic (Σ x²).
    let diag = h.diagonal(0, 0, 1);
    let sums = &got.sums["model.layers.0.self_attn.q_proj.weight"].0;
    let rel = ((&diag - sums).abs().max() / sums.abs().max()).double_value(&[]);
    assert!(rel < 1e-4, "diag(XᵀX) against Σ x²: {rel}");
    assert!(
        h.eq_tensor(&h.transpose(0, 1)).all().int64_value(&[]) == 1 || {
            let asym = (h - h.transpose(0, 1)).abs().max().double_value(&[]);
            asym <= 1e-5 * h.abs().max().double_value(&[])
        }
    );
}

/// A sequential SparseGPT pass on the GPU that fails in its last block leaves the bf16 model
/// bit-identical, with its journal in pinned host memory or beside the weights on the device;
/// a completed pass kept for undo (its device journal moved to the host) is taken back bit for
/// bit.
#[test]
fn cuda_sequential_sparsegpt_rolls_back_from_either_journal_place() {
    if !cuda_or_skip("cuda_sequential_sparsegpt_rolls_back_from_either_journal_place") {
        return;
    }
    let m = model_on(GPU, Kind::BFloat16);
    let calib = calibration(&m, 4, 128);
    let weights = block_weights(&m);
    let before = snapshot(&weights);
    let last = m.model.num_blocks() - 1;
    let cfg = PassConfig {
        sparsity: 0.5,
        ..Default::default()
    };
    for place in [JournalPlace::Host, JournalPlace::Device] {
        let mut pruner = sparsegpt(&[]);
        pruner
            .set_undo(UndoPolicy {
                journal: place,
                ..Default::default()
            })
            .unwrap();
        let mut pass = pruner.sequential(&cfg);
        let result = for_each_block_calibrated(&m.model, &calib, 2, true, |i, names, got| {
            let stats = ActivationStats::from_parts(got.sums, got.hessians);
            if i == last {
                inject_commit_failure(Some(4));
            }
            pass.block(m.model.var_store(), names, &stats)?;
            Ok::<_, Box<dyn std::error::Error>>(())
        });
        let err = result.expect_err("the last block fails").to_string();
        assert!(err.contains("injected commit failure"), "{place:?}: {err}");
        drop(pass);
        assert_bitwise(
            &weights,
            &before,
            &format!("{place:?}: after a failed pass"),
        );
    }
    let mut pruner = sparsegpt(&[]);
    pruner
        .set_undo(UndoPolicy {
            journal: JournalPlace::Device,
            passes: 1,
            ..Default::default()
        })
        .unwrap();
    let mut pass = pruner.sequential(&cfg);
    for_each_block_calibrated(&m.model, &calib, 2, true, |_, names, got| {
        let stats = ActivationStats::from_parts(got.sums, got.hessians);
        pass.block(m.model.var_store(), names, &stats)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
    .unwrap();
    let (report, _) = pass.finish().unwrap();
    assert_eq!(report.pruned * 2, report.total);
    assert!(weights
        .iter()
        .zip(&before)
        .all(|((_, w), b)| !identical(w, b)));
    assert!(pruner.undo().unwrap(), "the pass was kept for undo");
    assert_bitwise(&weights, &before, "after undo of a device-journal pass");
}
