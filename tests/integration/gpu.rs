//! CUDA paths, checked against the CPU path bit for bit. They return early where no GPU is
//! present (CI); scripts/gpu-run.sh runs them on the GPU machine.

use birdbone_tch::{ActivationStats, Error, HostError, PassConfig, PassInputs, Pruner};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

use crate::checks::*;

fn on(params: &[(String, Tensor)], device: Device) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(device)))
        .collect()
}

/// Activation statistics (one squared-norm vector per parameter, as from 64 rows) on `device`.
fn stats_on(params: &[(String, Tensor)], sq: &[Tensor], device: Device) -> ActivationStats {
    let mut s = ActivationStats::new();
    for ((name, _), t) in params.iter().zip(sq) {
        s.insert(name.clone(), t.to_device(device), 64);
    }
    s
}

/// Random activation statistics for `params`, the same on the CPU and on CUDA: squared norms
/// e^(2 N(0, 1)) per input column, so column scales span a wide range.
fn random_stats(params: &[(String, Tensor)]) -> (ActivationStats, ActivationStats) {
    let sq: Vec<Tensor> = params
        .iter()
        .map(|(_, w)| (Tensor::randn([w.size()[1]], (Kind::Float, Device::Cpu)) * 2.0).exp())
        .collect();
    (
        stats_on(params, &sq, Device::Cpu),
        stats_on(params, &sq, Device::Cuda(0)),
    )
}

/// Runs `scorer` + `strategy` (settings `st`) at `sparsity` on a copy of `cpu` and on a CUDA copy,
/// and asserts the counts, the masks and the weights identical; with `scope=row`, every row exact.
fn assert_cuda_prunes_like_the_cpu(
    cpu: &[(String, Tensor)],
    stats: (&ActivationStats, &ActivationStats),
    (scorer, strategy, st, sparsity): (&str, &str, &[(&str, &str)], f64),
    what: &str,
) {
    let reg = builtin_registry();
    let cpu_params: Vec<_> = cpu.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
    let gpu_params = on(cpu, Device::Cuda(0));
    let cfg = PassConfig {
        sparsity,
        ..Default::default()
    };
    let pruner = || Pruner::new(&reg, scorer, &settings(&[]), strategy, &settings(st)).unwrap();
    let inputs = |stats| PassInputs {
        stats: Some(stats),
        ..Default::default()
    };
    let (cr, cm) = pruner().run(&cpu_params, &cfg, inputs(stats.0)).unwrap();
    let (gr, gm) = pruner().run(&gpu_params, &cfg, inputs(stats.1)).unwrap();
    let what = format!("{scorer} + {strategy} {st:?} {sparsity} {what}");
    assert_eq!(cr.pruned, gr.pruned, "{what}: counts differ");
    for ((name, c), (_, g)) in cpu_params.iter().zip(&gpu_params) {
        let g_mask = gm.get(name).unwrap();
        assert!(
            identical(
                &cm.get(name).unwrap().bits,
                &g_mask.bits.to_device(Device::Cpu)
            ),
            "{what} {name}: masks differ"
        );
        assert!(
            identical(c, &g.to_device(Device::Cpu)),
            "{what} {name}: weights differ"
        );
        if !st.contains(&("scope", "row")) {
            continue;
        }
        let want = (sparsity * c.size()[1] as f64).round() as i64;
        let pruned_per_row = g_mask
            .keep()
            .unwrap()
            .to_device(Device::Cpu)
            .logical_not()
            .sum_dim_intlist(Some(&[1i64][..]), false, Kind::Int64);
        assert_eq!(
            pruned_per_row.ne(want).sum(Kind::Int64).int64_value(&[]),
            0,
            "{what} {name}: a row is not exact"
        );
    }
}

#[test]
fn cuda_masks_match_the_cpu_bit_for_bit_and_counts_are_exact() {
    if !cuda_or_skip("cuda_masks_match_the_cpu_bit_for_bit_and_counts_are_exact") {
        return;
    }
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64, Option<(u32, u32)>);
    let cases: Vec<Case> = vec![
        ("global", vec![], 0.5, None),
        ("global", vec![], 0.37, None),
        ("layerwise", vec![], 0.6, None),
        ("layerwise", vec![("scope", "row")], 0.5, None),
        ("nm", vec![], 0.0, Some((2, 4))),
        ("nm", vec![], 0.0, Some((4, 8))),
    ];
    for kind in [Kind::BFloat16, Kind::Half, Kind::Float] {
        let cpu = real_weights(kind);
        for (strategy, st, sparsity, nm) in &cases {
            let cpu_params: Vec<_> = cpu.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
            let gpu_params = on(&cpu, Device::Cuda(0));
            let before = snapshot(&cpu_params);
            let (cpu_report, cpu_masks) = run(&cpu_params, strategy, st, *sparsity, *nm);
            let (gpu_report, gpu_masks) = run(&gpu_params, strategy, st, *sparsity, *nm);
            assert_eq!(
                cpu_report.pruned, gpu_report.pruned,
                "{strategy} {st:?} {kind:?}"
            );
            for ((name, c), (_, g)) in cpu_params.iter().zip(&gpu_params) {
                let cm = &cpu_masks.get(name).unwrap().bits;
                let gm = gpu_masks.get(name).unwrap().bits.to_device(Device::Cpu);
                assert!(
                    identical(cm, &gm),
                    "{strategy} {st:?} {kind:?} {name}: masks differ"
                );
                assert!(
                    identical(c, &g.to_device(Device::Cpu)),
                    "{strategy} {st:?} {kind:?} {name}: weights differ"
                );
            }
            let scope = match (*strategy, st.first()) {
                ("global", _) => Scope::Global,
                ("layerwise", Some(("scope", "row"))) => Scope::Row,
                ("layerwise", _) => Scope::Tensor,
                _ => Scope::Group(nm.unwrap().0 as i64, nm.unwrap().1 as i64),
            };
            let gpu_back = on(&gpu_params, Device::Cpu);
            let gpu_masks_cpu = birdbone_tch::MaskSet::load(
                &{
                    let p = std::env::temp_dir()
                        .join(format!("bb-gpu-{}.safetensors", std::process::id()));
                    gpu_masks.save(&p).unwrap();
                    p
                },
                Device::Cpu,
            )
            .unwrap();
            check_pass(&gpu_back, &before, &gpu_masks_cpu, *sparsity, scope);
        }
    }
}

#[test]
fn cuda_nan_weight_is_an_error_and_the_model_is_untouched() {
    if !cuda_or_skip("cuda_nan_weight_is_an_error_and_the_model_is_untouched") {
        return;
    }
    let params = on(&real_weights(Kind::BFloat16), Device::Cuda(0));
    // The middle parameter, and one whose vectors of eight fill whole chunks that 2 048 threads
    // divide evenly (the band pass's loop without per-vector bounds).
    let whole = params
        .iter()
        .position(|(_, w)| w.numel() % (8 * 2048) == 0)
        .expect("a parameter of whole chunks");
    for at in [params.len() / 2, whole] {
        let name = &params[at].0;
        let cols = params[at].1.size()[1];
        let clean = params[at].1.get(3).get(7).copy();
        {
            let _g = tch::no_grad_guard();
            let _ = params[at].1.get(3).get(7).fill_(f64::INFINITY);
        }
        let before = snapshot(&params);
        let expected = (3 * cols + 7) as u64;
        for (label, err) in failing_magnitude_passes(&params, &before) {
            assert!(
                matches!(&err, Error::Host(HostError::NonFinite { param, index, .. }) if param == name && *index == expected),
                "{label}, {name}: {err}"
            );
        }
        // Wanda per row: the rows are selected while they are written, so the plan's finiteness
        // check of the scaled scores is what keeps the model untouched.
        let sq: Vec<Tensor> = params
            .iter()
            .map(|(_, w)| Tensor::ones([w.size()[1]], (Kind::Float, Device::Cpu)))
            .collect();
        let err =
            wanda_rows(&params, &stats_on(&params, &sq, Device::Cuda(0))).expect_err("must fail");
        assert!(
            matches!(&err, Error::Host(HostError::NonFinite { param, what: "score", index }) if param == name && *index == expected),
            "wanda, {name}: {err}"
        );
        assert_untouched(&params, &before);
        let _g = tch::no_grad_guard();
        params[at].1.get(3).get(7).copy_(&clean);
    }
}

/// Wanda (activation norms) with layer-wise per-row selection at 50%.
fn wanda_rows(
    params: &[(String, Tensor)],
    stats: &ActivationStats,
) -> Result<birdbone_tch::PassReport, Error> {
    let reg = builtin_registry();
    let mut pruner = Pruner::new(
        &reg,
        "wanda",
        &settings(&[]),
        "layerwise",
        &settings(&[("scope", "row")]),
    )?;
    let inputs = PassInputs {
        stats: Some(stats),
        ..Default::default()
    };
    Ok(pruner.run(params, &PassConfig::default(), inputs)?.0)
}

#[test]
fn cuda_wanda_score_overflow_is_an_error_and_the_model_is_untouched() {
    if !cuda_or_skip("cuda_wanda_score_overflow_is_an_error_and_the_model_is_untouched") {
        return;
    }
    // Every weight and every norm is finite, but one product overflows f32: the score is
    // infinite, which the CPU path rejects, so the GPU path must too, before any write.
    let params = on(&real_weights(Kind::BFloat16), Device::Cuda(0));
    let at = params.len() - 1;
    {
        let _g = tch::no_grad_guard();
        let _ = params[at].1.get(5).get(11).fill_(1e38);
    }
    let sq: Vec<Tensor> = params
        .iter()
        .map(|(_, w)| Tensor::full([w.size()[1]], 1e4, (Kind::Float, Device::Cpu)))
        .collect();
    let before = snapshot(&params);
    let err = wanda_rows(&params, &stats_on(&params, &sq, Device::Cuda(0)))
        .expect_err("an infinite score must fail the pass");
    let cols = params[at].1.size()[1] as u64;
    assert!(
        matches!(&err, Error::Host(HostError::NonFinite { param, what: "score", index }) if *param == params[at].0 && *index == 5 * cols + 11),
        "{err}"
    );
    assert_untouched(&params, &before);
    // The same weights and statistics on the CPU fail alike.
    let cpu = on(&params, Device::Cpu);
    let err = wanda_rows(&cpu, &stats_on(&cpu, &sq, Device::Cpu))
        .expect_err("the CPU path rejects it too");
    assert!(
        matches!(
            &err,
            Error::Host(HostError::NonFinite { what: "score", .. })
        ),
        "{err}"
    );
}

#[test]
fn cuda_wanda_scores_select_like_the_cpu() {
    if !cuda_or_skip("cuda_wanda_scores_select_like_the_cpu") {
        return;
    }
    let cpu = real_weights(Kind::BFloat16);
    tch::manual_seed(3);
    let (cpu_stats, gpu_stats) = random_stats(&cpu);
    // `op-chain` scores by host operations that read each other's results (a root of a root,
    // a root of a tensor then overwritten): on CUDA the host defers square roots within a batch
    // of scorer calls, and the masks match the CPU's only if it keeps their order.
    let mut reg = builtin_registry();
    let loaded = reg.load_paths(&[plugin_file("birdbone_fixture_plugin_op_chain")]);
    assert!(loaded.rejected.is_empty(), "{:?}", loaded.rejected);
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<(u32, u32)>,
    );
    let mut cases: Vec<Case> = vec![];
    for scorer in ["wanda", "op-chain"] {
        cases.extend([
            (scorer, "layerwise", vec![("scope", "row")], None),
            (scorer, "layerwise", vec![], None),
            (scorer, "global", vec![], None),
            (scorer, "nm", vec![], Some((2, 4))),
        ]);
    }
    for (scorer, strategy, st, nm) in cases {
        let cpu_params: Vec<_> = cpu.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let gpu_params = on(&cpu, Device::Cuda(0));
        let cfg = PassConfig {
            sparsity: 0.5,
            nm,
            ..Default::default()
        };
        let mut a = Pruner::new(&reg, scorer, &settings(&[]), strategy, &settings(&st)).unwrap();
        let mut b = Pruner::new(&reg, scorer, &settings(&[]), strategy, &settings(&st)).unwrap();
        let (cr, cm) = a
            .run(
                &cpu_params,
                &cfg,
                PassInputs {
                    stats: Some(&cpu_stats),
                    ..Default::default()
                },
            )
            .unwrap();
        let (gr, gm) = b
            .run(
                &gpu_params,
                &cfg,
                PassInputs {
                    stats: Some(&gpu_stats),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(
            cr.pruned, gr.pruned,
            "{scorer} + {strategy} {st:?}: counts differ"
        );
        assert_eq!(
            cr.pruned * 2,
            cr.total,
            "{scorer} + {strategy} {st:?}: not 50%"
        );
        for (name, m) in cm.iter() {
            let g = gm.get(name).unwrap().bits.to_device(Device::Cpu);
            assert!(
                identical(&m.bits, &g),
                "{scorer} + {strategy} {st:?} {name}: masks differ"
            );
        }
    }
}

/// LLM-sized rows (4096 to 20000 columns: the per-row kernel then spreads a row over one to
/// several warps) with many ties, constant rows and zero rows: per-row and per-tensor
/// selections, magnitude and Wanda scores, CPU = GPU bit for bit.
#[test]
fn cuda_selections_on_llm_sized_rows_match_the_cpu() {
    if !cuda_or_skip("cuda_selections_on_llm_sized_rows_match_the_cpu") {
        return;
    }
    tch::manual_seed(17);
    let shapes: [(i64, i64); 4] = [(48, 4096), (24, 14336), (8, 11008), (6, 20000)];
    for kind in [Kind::BFloat16, Kind::Float] {
        let cpu: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(r, c))| {
                let w = (Tensor::randn([r, c], (Kind::Float, Device::Cpu)) * 0.02).to_kind(kind);
                let _ = w.get(1).fill_(0.25); // every key of the row ties
                let _ = w.get(2).fill_(0.0);
                // Half the row ties.
                let _ = w.get(3).narrow(0, 0, c / 2).fill_(-0.01);
                // Three quarters of the row ~1e-30 and one weight 1e30: the selection lies 200
                // octaves under the row's largest score, below the first level's 32-octave
                // window, so the kernel starts that row over with full-width levels.
                let tiny = Tensor::randn([3 * c / 4], (Kind::Float, Device::Cpu)) * 1e-30;
                w.get(4).narrow(0, 0, 3 * c / 4).copy_(&tiny.to_kind(kind));
                let _ = w.get(4).get(c - 1).fill_(1e30);
                (format!("w{i}.weight"), w)
            })
            .collect();
        let (cpu_stats, gpu_stats) = random_stats(&cpu);
        for case in [
            ("magnitude", "layerwise", &[("scope", "row")][..], 0.5),
            ("magnitude", "layerwise", &[("scope", "row")][..], 0.3),
            ("wanda", "layerwise", &[("scope", "row")][..], 0.5),
            ("magnitude", "layerwise", &[][..], 0.5),
        ] {
            let stats = (&cpu_stats, &gpu_stats);
            assert_cuda_prunes_like_the_cpu(&cpu, stats, case, &format!("{kind:?}"));
        }
    }
}

/// Wanda scores that tie: one activation norm for every column, so a row's scores tie wherever
/// its bf16 magnitudes do (dozens of keys at the threshold in a Gaussian row, every key in a
/// constant or zero row, half the keys in a half-tied row), which the other Wanda tests' random
/// norms never give. The per-row kernel must then cut the ties by column: CPU = GPU bit for bit,
/// at row lengths that fill whole warps and at the real model's (576), which do not.
#[test]
fn cuda_wanda_rows_of_tied_scores_match_the_cpu() {
    if !cuda_or_skip("cuda_wanda_rows_of_tied_scores_match_the_cpu") {
        return;
    }
    tch::manual_seed(41);
    let shapes: [(i64, i64); 3] = [(64, 4096), (16, 14336), (96, 576)];
    let cpu: Vec<(String, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            let w = Tensor::randn([r, c], (Kind::Float, Device::Cpu)) * 0.02;
            let _ = w.get(1).fill_(0.25);
            let _ = w.get(2).fill_(0.0);
            let _ = w.get(3).narrow(0, 0, c / 2).fill_(-0.01);
            (format!("w{i}.weight"), w.to_kind(Kind::BFloat16))
        })
        .collect();
    let sq: Vec<Tensor> = cpu
        .iter()
        .map(|(_, w)| Tensor::full([w.size()[1]], 4.0, (Kind::Float, Device::Cpu)))
        .collect();
    let stats = (
        &stats_on(&cpu, &sq, Device::Cpu),
        &stats_on(&cpu, &sq, Device::Cuda(0)),
    );
    for sparsity in [0.5, 0.3, 0.9] {
        let case = ("wanda", "layerwise", &[("scope", "row")][..], sparsity);
        assert_cuda_prunes_like_the_cpu(&cpu, stats, case, "tied wanda");
    }
}

/// Magnitudes spread over 240 octaves (bf16 holds them all) in small tensors. Per tensor (1 024
/// weights a scope, all of them sampled), the band the sample gives spans about 50 octaves, more
/// 16-bit keys than the band pass can histogram (4 096): the device finds that while choosing the
/// band, reports it with the pass's read-back, and the selection runs again over the full
/// histograms. Globally (2 048 weights, a row of ties near the middle) the band fits, just (about
/// 28 octaves), and is taken (step timing, `RUST_LOG=birdbone_tch::steps=trace`, shows one band resolved). CPU = GPU bit for bit.
#[test]
fn cuda_selections_over_a_too_wide_band_match_the_cpu() {
    if !cuda_or_skip("cuda_selections_over_a_too_wide_band_match_the_cpu") {
        return;
    }
    tch::manual_seed(23);
    let cpu: Vec<(String, Tensor)> = [(32i64, 32i64), (16, 64)]
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            let octaves = Tensor::rand([r, c], (Kind::Float, Device::Cpu)) * 240.0 - 120.0;
            let sign = Tensor::randn([r, c], (Kind::Float, Device::Cpu)).sign();
            let w = (octaves.exp2() * sign).to_kind(Kind::BFloat16);
            let _ = w.get(1).fill_(0.5); // a row of ties
            (format!("w{i}.weight"), w)
        })
        .collect();
    let (cpu_stats, gpu_stats) = random_stats(&cpu);
    for case in [
        ("magnitude", "global", &[][..], 0.5),
        ("magnitude", "layerwise", &[][..], 0.5),
    ] {
        assert_cuda_prunes_like_the_cpu(&cpu, (&cpu_stats, &gpu_stats), case, "too wide a band");
    }
}

/// The training callback on CUDA with a training-signal plugin and growth plates: after every
/// AdamW step the pruned weights are zero and the count is the schedule's, exactly.
#[test]
fn cuda_training_callback_holds_exact_sparsity_with_taylor_scores() {
    use birdbone_tch::train::{Compression, CompressionConfig, Curve, GrowthPlateConfig, Schedule};
    use tch::nn::{self, Module, OptimizerConfig};
    if !cuda_or_skip("cuda_training_callback_holds_exact_sparsity_with_taylor_scores") {
        return;
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(5);
    let vs = nn::VarStore::new(dev);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "fc1", 256, 512, Default::default()))
        .add_fn(|x| x.gelu("none"))
        .add(nn::linear(&root / "fc2", 512, 64, Default::default()));
    let x = Tensor::randn([512, 256], (Kind::Float, dev));
    let y = Tensor::randn([512, 64], (Kind::Float, dev));
    let mut opt = nn::AdamW::default().build(&vs, 1e-3).unwrap();
    let reg = builtin_registry();
    let pruner = Pruner::new(&reg, "taylor", &settings(&[]), "global", &settings(&[])).unwrap();
    let schedule = Schedule::Gradual {
        start_step: 4,
        end_step: 12,
        every: 4,
        initial_sparsity: 0.2,
        final_sparsity: 0.6,
        curve: Curve::Cubic,
    };
    let mut comp = Compression::new(
        pruner,
        CompressionConfig {
            schedule: schedule.clone(),
            filter: Default::default(),
            nm: None,
            growth_plates: Some(GrowthPlateConfig::default()),
            regrow: None,
            layer_plates: None,
        },
    )
    .unwrap();
    let total = (256 * 512 + 512 * 64) as f64;
    let mut expected = 0u64;
    for step in 1..=14u64 {
        opt.zero_grad();
        net.forward(&x)
            .mse_loss(&y, tch::Reduction::Mean)
            .backward();
        comp.after_backward(&vs).unwrap();
        opt.step();
        let ev = comp.after_step(&vs).unwrap();
        if let Some(s) = schedule.target_at(step) {
            expected = (s * total).round() as u64;
            assert_eq!(ev.pass.as_ref().unwrap().pruned, expected, "step {step}");
            assert!(
                ev.pass.as_ref().unwrap().device.contains("Cuda"),
                "{}",
                ev.pass.as_ref().unwrap().device
            );
        }
        assert_eq!(comp.masks().counts().unwrap().0, expected, "step {step}");
        for (name, t) in vs.variables() {
            if let Some(m) = comp.masks().get(&name) {
                let off = t.masked_select(&m.keep().unwrap().logical_not());
                assert_eq!(
                    off.ne(0.0).sum(Kind::Int64).int64_value(&[]),
                    0,
                    "{name} step {step}"
                );
            }
        }
    }
    assert_eq!(expected, (0.6 * total).round() as u64);
}

/// Mistral-7B's shapes in bf16 on the GPU: a forward pass, a global pass of the pruner in place
/// over all 224 Linear weights, and a forward pass of the pruned model.
#[test]
fn cuda_mistral_7b_shapes_forward_prune_forward() {
    use birdbone_llama::{Llama, LlamaConfig};
    if !cuda_or_skip("cuda_mistral_7b_shapes_forward_prune_forward") {
        return;
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(7);
    let model = Llama::random(LlamaConfig::mistral_7b(), dev, Kind::BFloat16, 0.02).unwrap();
    let ids = Tensor::randint(32000, [1, 64], (Kind::Int64, dev));
    let before = tch::no_grad(|| model.forward(&ids, None, None)).unwrap();
    assert_eq!(before.size(), [1, 64, 32000]);
    assert_eq!(before.isfinite().all().int64_value(&[]), 1);
    let reg = builtin_registry();
    let mut pruner =
        Pruner::new(&reg, "magnitude", &settings(&[]), "global", &settings(&[])).unwrap();
    let (report, _) = pruner
        .run(
            model.var_store(),
            &PassConfig {
                sparsity: 0.5,
                keep_masks: false,
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
    assert_eq!(report.params.len(), 32 * 7);
    assert_eq!(report.pruned, (0.5 * report.total as f64).round() as u64);
    assert!(report.total > 6_900_000_000, "{}", report.total);
    eprintln!(
        "mistral-7b shapes: {} weights, plan {:.1} ms, commit {:.1} ms",
        report.total,
        report.plan_seconds * 1e3,
        report.commit_seconds * 1e3
    );
    let after = tch::no_grad(|| model.forward(&ids, None, None)).unwrap();
    assert_eq!(after.isfinite().all().int64_value(&[]), 1);
    assert!(
        !identical(&before, &after),
        "pruning half the weights changed nothing"
    );
}

/// Column scales that start off a 16-byte boundary (views into a larger buffer) are copied before
/// the kernels, which read them four at a time, see them: the per-row pass runs and prunes exactly
/// as with fresh scale tensors.
#[test]
fn cuda_unaligned_column_scales_select_like_aligned_ones() {
    if !cuda_or_skip("cuda_unaligned_column_scales_select_like_aligned_ones") {
        return;
    }
    tch::manual_seed(5);
    let shapes: [(i64, i64); 2] = [(64, 4096), (32, 14336)];
    let cpu: Vec<(String, Tensor)> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| {
            let w = Tensor::randn([r, c], (Kind::Float, Device::Cpu)) * 0.02;
            (format!("w{i}.weight"), w.to_kind(Kind::BFloat16))
        })
        .collect();
    let bufs: Vec<Tensor> = shapes
        .iter()
        .map(|&(_, c)| (Tensor::randn([c + 1], (Kind::Float, Device::Cuda(0))) * 2.0).exp())
        .collect();
    // One f32 in: 4 bytes past the allocation's (aligned) start.
    let views: Vec<Tensor> = bufs
        .iter()
        .zip(&shapes)
        .map(|(b, &(_, c))| b.narrow(0, 1, c))
        .collect();
    assert!(views
        .iter()
        .all(|v| !(v.data_ptr() as usize).is_multiple_of(16)));
    let fresh: Vec<Tensor> = views.iter().map(|v| v.copy()).collect();
    let (a, b) = (on(&cpu, Device::Cuda(0)), on(&cpu, Device::Cuda(0)));
    let path = birdbone_tch::direct::DirectPath::PerRowScaled;
    let pa = birdbone_tch::direct::prune(&a, path(&views), 0.5, false).unwrap();
    let pb = birdbone_tch::direct::prune(&b, path(&fresh), 0.5, false).unwrap();
    let want: u64 = shapes.iter().map(|&(r, c)| (r * (c / 2)) as u64).sum();
    assert_eq!((pa, pb), (want, want));
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            identical(x, y),
            "{name}: unaligned scales pruned differently"
        );
    }
}

/// Many rows per block of the fused per-row kernel, which selects each row from a band around
/// the threshold of the block's previous row: alike rows (the band holds the threshold), rows
/// whose scale jumps (it does not: the row is selected without it, and the band widens), and
/// rows of ties, zeros and half ties among them. CPU = GPU bit for bit, every row exact.
#[test]
fn cuda_rows_predicted_from_the_row_before_match_the_cpu() {
    if !cuda_or_skip("cuda_rows_predicted_from_the_row_before_match_the_cpu") {
        return;
    }
    tch::manual_seed(29);
    let shapes: [(i64, i64); 2] = [(4096, 4096), (1024, 14336)];
    for kind in [Kind::BFloat16, Kind::Float] {
        let cpu: Vec<(String, Tensor)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &(r, c))| {
                let w = Tensor::randn([r, c], (Kind::Float, Device::Cpu)) * 0.02;
                // The second half of the rows: each at its own scale (e^N(0, 1)).
                let jump = Tensor::randn([r / 2, 1], (Kind::Float, Device::Cpu)).exp();
                let scaled = w.narrow(0, r / 2, r / 2) * &jump;
                w.narrow(0, r / 2, r / 2).copy_(&scaled);
                for row in (5..r).step_by(97) {
                    let _ = w.get(row).fill_(0.25);
                }
                for row in (7..r).step_by(89) {
                    let _ = w.get(row).fill_(0.0);
                }
                for row in (11..r).step_by(83) {
                    let _ = w.get(row).narrow(0, 0, c / 2).fill_(-0.01);
                }
                (format!("w{i}.weight"), w.to_kind(kind))
            })
            .collect();
        let (cpu_stats, gpu_stats) = random_stats(&cpu);
        for (scorer, sparsity) in [("wanda", 0.5), ("magnitude", 0.5), ("wanda", 0.3)] {
            let case = (scorer, "layerwise", &[("scope", "row")][..], sparsity);
            let stats = (&cpu_stats, &gpu_stats);
            assert_cuda_prunes_like_the_cpu(&cpu, stats, case, &format!("{kind:?}"));
        }
    }
}

#[test]
fn cuda_a_failed_commit_is_rolled_back_and_passes_can_be_undone() {
    if !cuda_or_skip("cuda_a_failed_commit_is_rolled_back_and_passes_can_be_undone") {
        return;
    }
    let params = on(&real_weights(Kind::BFloat16), Device::Cuda(0));
    // Failures before, between and after the writes (the batched kernels then run one
    // parameter at a time so a failure can fall between any two); pinned host copies restore.
    crate::undo::failure_at_every_stage_restores_the_weights(&params);
    crate::undo::passes_undone_in_order_return_to_the_start(&params);
    crate::undo::the_training_callback_takes_a_pass_back_with_its_masks(&params);
}

/// The CUDA engine launches on libtorch's current stream, asked through the C++ shim built
/// against the installed torch: the shim is in this build (the pinned torch has CUDA), and on a
/// GPU the lookup answers. A torch whose API changed fails the build or this test, never a
/// launch on the wrong stream.
#[test]
fn libtorch_current_stream_is_found_through_the_shim() {
    use birdbone_tch::cuda_stream;
    assert!(
        cuda_stream::shim_built(),
        "the stream shim was not built: is the pinned (CUDA) torch in .venv?"
    );
    // Without a GPU the lookup says it cannot answer; it must not crash.
    let answer = cuda_stream::current_cuda_stream(0);
    if !cuda_or_skip("libtorch_current_stream_is_found_through_the_shim") {
        return;
    }
    let stream = answer.expect("libtorch's current CUDA stream lookup failed on a GPU");
    // Nothing here set a stream, so libtorch's current one is the default (legacy, null) one.
    assert!(stream.is_null(), "unexpected current stream {stream:?}");
    assert!(
        cuda_stream::current_cuda_stream(99).is_none(),
        "device 99 answered"
    );
}
