//! CUDA paths, checked against the CPU path bit for bit. They return early where no GPU is
//! present (CI); scripts/gpu-check.sh runs them on the GPU machine.

use birdbone_tch::{ActivationStats, Error, PassConfig, PassInputs, Pruner};
use birdbone_tests::*;
use tch::{Device, Kind, Tensor};

use crate::checks::*;

fn on(params: &[(String, Tensor)], device: Device) -> Vec<(String, Tensor)> {
    params
        .iter()
        .map(|(n, t)| (n.clone(), t.to_device(device)))
        .collect()
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
    {
        let _g = tch::no_grad_guard();
        let _ = params[params.len() / 2]
            .1
            .get(3)
            .get(7)
            .fill_(f64::INFINITY);
    }
    let before = snapshot(&params);
    for (strategy, st, nm) in [
        ("global", vec![], None),
        ("layerwise", vec![("scope", "row")], None),
        ("nm", vec![], Some((2, 4))),
    ] {
        let reg = builtin_registry();
        let mut pruner =
            Pruner::new(&reg, "magnitude", &settings(&[]), strategy, &settings(&st)).unwrap();
        let err = pruner
            .run(
                &params,
                &PassConfig {
                    nm,
                    ..Default::default()
                },
                Default::default(),
            )
            .err()
            .expect("must fail");
        assert!(
            matches!(&err, Error::NonFinite { param, .. } if *param == params[params.len() / 2].0),
            "{strategy}: {err}"
        );
        assert_untouched(&params, &before);
    }
}

#[test]
fn cuda_wanda_scores_select_like_the_cpu() {
    if !cuda_or_skip("cuda_wanda_scores_select_like_the_cpu") {
        return;
    }
    let cpu = real_weights(Kind::BFloat16);
    tch::manual_seed(3);
    let sq: Vec<Tensor> = cpu
        .iter()
        .map(|(_, w)| (Tensor::randn([w.size()[1]], (Kind::Float, Device::Cpu)) * 2.0).exp())
        .collect();
    let stats_on = |device: Device| {
        let mut s = ActivationStats::new();
        for ((name, _), t) in cpu.iter().zip(&sq) {
            s.insert(name.clone(), t.to_device(device), 64);
        }
        s
    };
    let (cpu_stats, gpu_stats) = (stats_on(Device::Cpu), stats_on(Device::Cuda(0)));
    let reg = builtin_registry();
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<(u32, u32)>);
    let cases: Vec<Case> = vec![
        ("layerwise", vec![("scope", "row")], None),
        ("layerwise", vec![], None),
        ("global", vec![], None),
        ("nm", vec![], Some((2, 4))),
    ];
    for (strategy, st, nm) in cases {
        let cpu_params: Vec<_> = cpu.iter().map(|(n, t)| (n.clone(), t.copy())).collect();
        let gpu_params = on(&cpu, Device::Cuda(0));
        let cfg = PassConfig {
            sparsity: 0.5,
            nm,
            ..Default::default()
        };
        let mut a = Pruner::new(&reg, "wanda", &settings(&[]), strategy, &settings(&st)).unwrap();
        let mut b = Pruner::new(&reg, "wanda", &settings(&[]), strategy, &settings(&st)).unwrap();
        let (cr, cm) = a
            .run(
                &cpu_params,
                &cfg,
                PassInputs {
                    stats: Some(&cpu_stats),
                },
            )
            .unwrap();
        let (gr, gm) = b
            .run(
                &gpu_params,
                &cfg,
                PassInputs {
                    stats: Some(&gpu_stats),
                },
            )
            .unwrap();
        assert_eq!(
            cr.pruned, gr.pruned,
            "wanda + {strategy} {st:?}: counts differ"
        );
        assert_eq!(
            cr.pruned * 2,
            cr.total,
            "wanda + {strategy} {st:?}: not 50%"
        );
        for (name, m) in cm.iter() {
            let g = gm.get(name).unwrap().bits.to_device(Device::Cpu);
            assert!(
                identical(&m.bits, &g),
                "wanda + {strategy} {st:?} {name}: masks differ"
            );
        }
    }
}
