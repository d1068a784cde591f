//! Every family the runtime claims, against transformers: small random models of each, written
//! by the `.venv`'s pinned transformers (scripts/tiny_models.py) with their reference logits;
//! Mistral's sliding window shorter than the sequence, Qwen2's biases, Llama 3's rope scaling.
//! And config fields the runtime does not implement are errors that name them.

use std::path::Path;

use birdbone_llama::{checkpoint, collect_stats, Llama, LlamaConfig};
use birdbone_tests::*;
use serde_json::{json, Value};
use tch::{Device, Kind, Tensor};

fn build_models(dir: &Path) {
    let out = std::process::Command::new(python())
        .arg(workspace_root().join("scripts/tiny_models.py"))
        .arg(dir)
        .output()
        .expect("run the venv's python");
    assert!(
        out.status.success(),
        "tiny_models.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn load(dir: &Path, edit: impl FnOnce(&mut LlamaConfig)) -> Llama {
    let mut config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    edit(&mut config);
    let tensors = checkpoint::load_dir(dir, None, Device::Cpu).unwrap();
    Llama::from_tensors(config, tensors, Device::Cpu, Kind::Float).unwrap()
}

/// The largest difference between the model's logits and the reference's, over every position.
pub(crate) fn worst(model: &Llama, reference: &Value) -> f64 {
    let ids: Vec<i64> = serde_json::from_value(reference["ids"].clone()).unwrap();
    let want: Vec<Vec<f64>> = serde_json::from_value(reference["logits"].clone()).unwrap();
    let got =
        tch::no_grad(|| model.forward(&Tensor::from_slice(&ids).unsqueeze(0), None, None)).unwrap();
    let mut worst = 0f64;
    for (pos, row) in want.iter().enumerate() {
        let mine = Vec::<f64>::try_from(&got.get(0).get(pos as i64).to_kind(Kind::Double)).unwrap();
        for (a, b) in mine.iter().zip(row) {
            worst = worst.max((a - b).abs());
        }
    }
    worst
}

#[test]
fn mistral_qwen2_and_llama3_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    build_models(tmp.path());
    for family in ["mistral", "qwen2", "llama3"] {
        let dir = tmp.path().join(family);
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
                .unwrap();
        let model = load(&dir, |_| {});
        let w = worst(&model, &reference);
        // As the SmolLM2 logits test: f32 accumulation-order differences stay far below this.
        assert!(
            w < 2e-3,
            "{family}: largest logit difference against transformers {w}"
        );
        eprintln!("{family}: largest logit difference against transformers {w:.2e}");
        // What each family adds is exercised: without it the logits differ.
        let without = match family {
            "mistral" => load(&dir, |c| c.sliding_window = None),
            "llama3" => load(&dir, |c| c.rope_scaling = Default::default()),
            _ => {
                let tensors: Vec<(String, Tensor)> = checkpoint::load_dir(&dir, None, Device::Cpu)
                    .unwrap()
                    .into_iter()
                    .map(|(n, t)| {
                        if n.ends_with(".bias") {
                            (n, t.zeros_like())
                        } else {
                            (n, t)
                        }
                    })
                    .collect();
                let config = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
                Llama::from_tensors(config, tensors, Device::Cpu, Kind::Float).unwrap()
            }
        };
        assert!(
            worst(&without, &reference) > 1e-2,
            "{family}: the feature under test changes nothing"
        );
        // Calibration statistics come from every family: one per Linear weight, finite.
        let ids: Vec<i64> = serde_json::from_value(reference["ids"].clone()).unwrap();
        let (sums, _) = collect_stats(&model, &[ids], 1).unwrap();
        assert_eq!(sums.len(), 2 * 7, "{family}");
        for (name, (t, tokens)) in &sums {
            assert_eq!(*tokens, 40, "{family} {name}");
            assert!(t.isfinite().all().int64_value(&[]) == 1, "{family} {name}");
        }
    }
}

#[test]
fn config_fields_the_runtime_does_not_implement_are_named() {
    let base = json!({
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96, "rope_theta": 10000.0,
        "torch_dtype": "float32", "architectures": ["LlamaForCausalLM"],
    });
    assert!(LlamaConfig::from_json(&base).is_ok());
    let err = |edit: Value| {
        let mut v = base.clone();
        for (k, x) in edit.as_object().unwrap() {
            v[k] = x.clone();
        }
        LlamaConfig::from_json(&v).unwrap_err().to_string()
    };
    let cases = [
        (
            json!({"quantization_config": {"bits": 4}}),
            "quantization_config",
        ),
        (json!({"hidden_act": "gelu"}), "hidden_act"),
        (json!({"mlp_bias": true}), "mlp_bias"),
        (json!({"attention_bias": true}), "attention_bias"),
        (json!({"rope_interleaved": true}), "rope_interleaved"),
        (
            json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}),
            "yarn",
        ),
        (
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
            "low_freq_factor",
        ),
        (
            json!({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0, "partial_rotary_factor": 0.5}}),
            "partial_rotary_factor",
        ),
        (
            json!({"rope_parameters": {"rope_theta": 500000.0}}),
            "rope_theta differs",
        ),
        (json!({"rope_theta": -1.0}), "rope_theta"),
        (json!({"rms_norm_eps": 0.0}), "rms_norm_eps"),
        (json!({"num_key_value_heads": 0}), "num_key_value_heads"),
        (json!({"model_type": "gemma"}), "gemma"),
        (json!({"use_sliding_window": false}), "use_sliding_window"),
        (
            json!({"layer_types": ["full_attention", "sliding_attention"]}),
            "layer_types",
        ),
    ];
    for (edit, named) in cases {
        let e = err(edit.clone());
        assert!(
            e.contains(named),
            "{edit}: the error does not name '{named}': {e}"
        );
    }
    let mut qwen = base.clone();
    qwen["model_type"] = json!("qwen2");
    qwen["use_sliding_window"] = json!(true);
    assert!(LlamaConfig::from_json(&qwen)
        .unwrap_err()
        .to_string()
        .contains("use_sliding_window"));
    // Qwen2's sliding_window applies only with use_sliding_window: read as no window.
    qwen["use_sliding_window"] = json!(false);
    qwen["sliding_window"] = json!(4096);
    assert_eq!(LlamaConfig::from_json(&qwen).unwrap().sliding_window, None);
    // transformers 5 writes theta inside rope_parameters: it is read from there.
    let mut t5 = base.clone();
    t5.as_object_mut().unwrap().remove("rope_theta");
    t5["rope_parameters"] = json!({"rope_type": "default", "rope_theta": 500000.0});
    assert_eq!(LlamaConfig::from_json(&t5).unwrap().rope_theta, 500000.0);
}
