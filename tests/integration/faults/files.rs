//! Bad files in a model folder (config.json, the safetensors checkpoint and its index,
//! tokenizer.json), bad mask files and bad recipes, each fed to the command that reads it. The
//! model folder is checked byte for byte afterwards.

use std::path::{Path, PathBuf};

use birdbone_host::mask_file::{self, StoredMask};
use birdbone_llama::checkpoint;
use serde_json::{json, Value};

use super::{birdbone, copy_dir, refused, short_eval, succeeds, untouched, Case, Failure};

const EVAL: &str = "eval: exit 1, an error naming it, the folder unchanged";

/// A copy of the tiny model named `name`, changed by `edit`.
fn variant(root: &Path, model: &Path, name: &str, edit: impl FnOnce(&Path)) -> PathBuf {
    let d = root.join("variants").join(name);
    copy_dir(model, &d);
    edit(&d);
    d
}

fn eval_refused(
    dir: PathBuf,
    needle: &'static str,
) -> impl FnOnce() -> Result<String, (Failure, String)> {
    move || untouched(&[&dir], || refused(&mut short_eval(&dir), needle))
}

fn edit_config(d: &Path, f: impl FnOnce(&mut Value)) {
    let p = d.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
}

/// Rewrites model.safetensors with its header JSON changed by `f` (data kept).
fn edit_header(d: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = d.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut h);
    let mut text = serde_json::to_vec(&h).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

/// An edit of an index's weight map.
type IndexEdit = dyn FnOnce(&mut serde_json::Map<String, Value>);

pub fn cases(root: &Path, model: &Path) -> Vec<Case> {
    let mut out = vec![];
    let config_cases: Vec<(&str, Value, &'static str)> = vec![
        (
            "num_hidden_layers 10^9 (would abort on allocation)",
            json!({"num_hidden_layers": 1_000_000_000u64}),
            "num_hidden_layers",
        ),
        (
            "num_key_value_heads 0 (divides by zero)",
            json!({"num_key_value_heads": 0}),
            "num_key_value_heads",
        ),
        (
            "num_attention_heads 0",
            json!({"num_attention_heads": 0}),
            "num_attention_heads",
        ),
        ("hidden_size 0", json!({"hidden_size": 0}), "hidden_size"),
        (
            "vocab_size 2^40",
            json!({"vocab_size": 1u64 << 40}),
            "vocab_size",
        ),
        (
            "intermediate_size 0",
            json!({"intermediate_size": 0}),
            "intermediate_size",
        ),
        ("head_dim 3 (odd)", json!({"head_dim": 3}), "head_dim"),
        (
            "KV heads not dividing the heads",
            json!({"num_key_value_heads": 3}),
            "multiple",
        ),
        (
            "negative rope_theta",
            json!({"rope_theta": -10000.0}),
            "rope_theta",
        ),
        ("rope_theta 0", json!({"rope_theta": 0.0}), "rope_theta"),
        (
            "negative rms_norm_eps",
            json!({"rms_norm_eps": -1e-5}),
            "rms_norm_eps",
        ),
        (
            "num_hidden_layers as a string",
            json!({"num_hidden_layers": "2"}),
            "num_hidden_layers",
        ),
        (
            "num_hidden_layers negative",
            json!({"num_hidden_layers": -2}),
            "num_hidden_layers",
        ),
        (
            "a field the runtime does not implement",
            json!({"quantization_config": {"bits": 4}}),
            "quantization_config",
        ),
        (
            "model_type gpt_neox",
            json!({"model_type": "gpt_neox"}),
            "gpt_neox",
        ),
        (
            "hidden_act gelu",
            json!({"hidden_act": "gelu"}),
            "hidden_act",
        ),
        (
            "sliding_window 0",
            json!({"sliding_window": 0}),
            "sliding_window",
        ),
        (
            "vocab_size against the embedding rows",
            json!({"vocab_size": 49153}),
            "embed_tokens",
        ),
        (
            "rope scaling of an unknown type",
            json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}),
            "yarn",
        ),
    ];
    for (what, edit, needle) in config_cases {
        let name = format!("config-{}", out.len());
        let d = variant(root, model, &name, |d| {
            edit_config(d, |v| {
                for (k, x) in edit.as_object().unwrap() {
                    v[k] = x.clone();
                }
            })
        });
        out.push(Case::new(
            "config.json",
            what,
            EVAL,
            eval_refused(d, needle),
        ));
    }
    let raw: Vec<(&str, &'static [u8], &'static str)> = vec![
        ("config.json not JSON", b"{\"model_type\": ", "config.json"),
        ("config.json an array", b"[1, 2]", "not a JSON object"),
        ("config.json empty", b"", "config.json"),
    ];
    for (what, bytes, needle) in raw {
        let d = variant(root, model, &format!("config-{}", out.len()), |d| {
            std::fs::write(d.join("config.json"), bytes).unwrap()
        });
        out.push(Case::new(
            "config.json",
            what,
            EVAL,
            eval_refused(d, needle),
        ));
    }
    let d = variant(root, model, "no-config", |d| {
        std::fs::remove_file(d.join("config.json")).unwrap()
    });
    out.push(Case::new(
        "config.json",
        "config.json missing",
        EVAL,
        eval_refused(d, "config.json"),
    ));

    // The checkpoint.
    let st = "checkpoint";
    let d = variant(root, model, "st-cut", |d| {
        let p = d.join("model.safetensors");
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
    out.push(Case::new(
        st,
        "model.safetensors cut in half",
        EVAL,
        eval_refused(d, "model.safetensors"),
    ));
    let d = variant(root, model, "st-len", |d| {
        let p = d.join("model.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        b[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        std::fs::write(&p, b).unwrap();
    });
    out.push(Case::new(
        st,
        "header length 2^40",
        EVAL,
        eval_refused(d, "header length"),
    ));
    let d = variant(root, model, "st-json", |d| {
        let p = d.join("model.safetensors");
        let mut b = std::fs::read(&p).unwrap();
        b[8] = b'X';
        std::fs::write(&p, b).unwrap();
    });
    out.push(Case::new(
        st,
        "header not JSON",
        EVAL,
        eval_refused(d, "header"),
    ));
    let d = variant(root, model, "st-overlap", |d| {
        edit_header(d, |h| {
            let a = h["model.layers.0.input_layernorm.weight"]["data_offsets"].clone();
            h["model.layers.1.input_layernorm.weight"]["data_offsets"] = a;
        })
    });
    out.push(Case::new(
        st,
        "two tensors over the same bytes",
        EVAL,
        eval_refused(d, "overlap"),
    ));
    let d = variant(root, model, "st-dtype", |d| {
        edit_header(d, |h| h["model.norm.weight"]["dtype"] = json!("Q4"))
    });
    out.push(Case::new(
        st,
        "an unknown dtype",
        EVAL,
        eval_refused(d, "unknown dtype"),
    ));
    let d = variant(root, model, "st-shape", |d| {
        edit_header(d, |h| {
            h["model.norm.weight"]["shape"] = json!([64, 1000000])
        })
    });
    out.push(Case::new(
        st,
        "a shape larger than its bytes",
        EVAL,
        eval_refused(d, "model.norm.weight"),
    ));
    let d = variant(root, model, "st-int", |d| {
        let mut t = checkpoint::load_dir(d, None, tch::Device::Cpu).unwrap();
        for (n, x) in &mut t {
            if n == "model.norm.weight" {
                *x = x.to_kind(tch::Kind::Int);
            }
        }
        checkpoint::save_model(&t, d, u64::MAX).unwrap();
    });
    out.push(Case::new(
        st,
        "integer weights",
        EVAL,
        eval_refused(d, "floating point"),
    ));
    let d = variant(root, model, "st-none", |d| {
        std::fs::remove_file(d.join("model.safetensors")).unwrap()
    });
    out.push(Case::new(
        st,
        "model.safetensors missing",
        EVAL,
        eval_refused(d, "model.safetensors"),
    ));

    // A sharded checkpoint's index.
    let sharded = |name: &str, f: Box<IndexEdit>| {
        variant(root, model, name, move |d| {
            let t = checkpoint::load_dir(d, None, tch::Device::Cpu).unwrap();
            std::fs::remove_file(d.join("model.safetensors")).unwrap();
            checkpoint::save_model(&t, d, 4 << 20).unwrap();
            let p = d.join("model.safetensors.index.json");
            let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            f(v["weight_map"].as_object_mut().unwrap());
            std::fs::write(&p, v.to_string()).unwrap();
        })
    };
    let d = sharded("ix-ok", Box::new(|_| {}));
    out.push(Case::new(
        st,
        "a sharded checkpoint (the control case)",
        "eval: runs, a finite perplexity",
        move || {
            let r = succeeds(short_eval(&d).arg("--json"))?;
            let v: Value =
                serde_json::from_str(&r.stdout).map_err(|e| (Failure::Silent, e.to_string()))?;
            match v["perplexity"].as_f64() {
                Some(p) if p.is_finite() && p > 1.0 => Ok("runs, finite perplexity".into()),
                other => Err((Failure::Silent, format!("perplexity {other:?}"))),
            }
        },
    ));
    let d = sharded(
        "ix-escape",
        Box::new(|m| {
            m.insert(
                "model.norm.weight".into(),
                json!("../../outside.safetensors"),
            );
        }),
    );
    out.push(Case::new(
        st,
        "an index pointing outside the folder",
        EVAL,
        eval_refused(d, "weight_map"),
    ));
    let d = sharded(
        "ix-missing",
        Box::new(|m| {
            m.insert(
                "model.norm.weight".into(),
                json!("model-00009-of-00009.safetensors"),
            );
        }),
    );
    out.push(Case::new(
        st,
        "an index naming a missing shard",
        EVAL,
        eval_refused(d, "model-00009-of-00009"),
    ));
    let d = sharded(
        "ix-extra",
        Box::new(|m| {
            m.insert(
                "model.extra.weight".into(),
                json!("model-00001-of-00002.safetensors"),
            );
        }),
    );
    out.push(Case::new(
        st,
        "an index listing a tensor no shard holds",
        EVAL,
        eval_refused(d, "model.extra.weight"),
    ));
    let d = sharded(
        "ix-moved",
        Box::new(|m| {
            let other = m
                .values()
                .map(|v| v.as_str().unwrap().to_string())
                .find(|f| Some(f.as_str()) != m["model.norm.weight"].as_str())
                .unwrap();
            m.insert("model.norm.weight".into(), json!(other));
        }),
    );
    out.push(Case::new(
        st,
        "an index naming the wrong shard (a stale index)",
        EVAL,
        eval_refused(d, "model.norm.weight"),
    ));
    let d = sharded("ix-empty", Box::new(|m| m.clear()));
    out.push(Case::new(
        st,
        "an index with an empty weight_map",
        EVAL,
        eval_refused(d, "weight_map"),
    ));

    // tokenizer.json.
    let tk = "tokenizer.json";
    let d = variant(root, model, "tok-json", |d| {
        std::fs::write(d.join("tokenizer.json"), "{\"model\": ").unwrap()
    });
    out.push(Case::new(
        tk,
        "not JSON",
        EVAL,
        eval_refused(d, "tokenizer.json"),
    ));
    let d = variant(root, model, "tok-none", |d| {
        std::fs::remove_file(d.join("tokenizer.json")).unwrap()
    });
    out.push(Case::new(
        tk,
        "missing",
        EVAL,
        eval_refused(d, "tokenizer.json"),
    ));
    let d = variant(root, model, "tok-merge", |d| {
        let p = d.join("tokenizer.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        v["model"]["merges"] = json!([["the", "the"]]);
        std::fs::write(&p, v.to_string()).unwrap();
    });
    out.push(Case::new(
        tk,
        "a merge joining into no token (tokenizers 0.23 panics on it)",
        EVAL,
        eval_refused(d, "merge 0"),
    ));

    // Mask files, through apply-masks.
    let mk = "mask files";
    let masks_dir = root.join("masks");
    std::fs::create_dir_all(&masks_dir).unwrap();
    let good = masks_dir.join("good.safetensors");
    let masks = |shape: Vec<i64>, name: &str, bits: Vec<u8>| {
        vec![StoredMask {
            name: name.into(),
            shape,
            bits,
        }]
    };
    mask_file::write(&masks(vec![64], "model.norm.weight", vec![0xff; 8]), &good).unwrap();
    let apply = |file: PathBuf, needle: &'static str, model: PathBuf, out_dir: PathBuf| {
        move || {
            untouched(&[&model], || {
                let r = refused(
                    birdbone()
                        .args(["apply-masks", "--quiet", "--model"])
                        .arg(&model)
                        .arg("--masks")
                        .arg(&file)
                        .arg("--out")
                        .arg(&out_dir),
                    needle,
                )?;
                if out_dir.exists() {
                    return Err((
                        Failure::Silent,
                        "a refused apply-masks wrote its folder".into(),
                    ));
                }
                Ok(r)
            })
        }
    };
    let cut = masks_dir.join("cut.safetensors");
    let b = std::fs::read(&good).unwrap();
    std::fs::write(&cut, &b[..b.len() - 3]).unwrap();
    let cases: Vec<(&str, PathBuf, &'static str)> = vec![
        ("a truncated mask file", cut, "cut.safetensors"),
        (
            "a model checkpoint given as masks",
            model.join("model.safetensors"),
            "not a Birdbone mask file",
        ),
        (
            "a mask recording a negative shape",
            {
                let p = masks_dir.join("neg.safetensors");
                mask_file::write(&masks(vec![-8, 8], "model.norm.weight", vec![0xff; 8]), &p)
                    .unwrap();
                p
            },
            "shape",
        ),
        (
            "a mask of a parameter the model lacks",
            {
                let p = masks_dir.join("other.safetensors");
                mask_file::write(&masks(vec![64], "model.other.weight", vec![0xff; 8]), &p)
                    .unwrap();
                p
            },
            "model.other.weight",
        ),
        (
            "a mask of another shape than its parameter",
            {
                let p = masks_dir.join("shape.safetensors");
                mask_file::write(&masks(vec![8, 8], "model.norm.weight", vec![0xff; 8]), &p)
                    .unwrap();
                p
            },
            "model.norm.weight",
        ),
        (
            "a mask with bits past its weights",
            {
                let p = masks_dir.join("bits.safetensors");
                mask_file::write(&masks(vec![60], "model.norm.weight", vec![0xff; 8]), &p).unwrap();
                p
            },
            "past",
        ),
        (
            "a mask file that does not exist",
            masks_dir.join("nope.safetensors"),
            "nope.safetensors",
        ),
    ];
    for (i, (what, file, needle)) in cases.into_iter().enumerate() {
        let o = root.join(format!("masks-out-{i}"));
        out.push(Case::new(
            mk,
            what,
            "apply-masks: exit 1, naming it; no output, the model unchanged",
            apply(file, needle, model.to_path_buf(), o),
        ));
    }

    // Recipes, through prune --dry-run.
    let rc = "recipes";
    let recipes = root.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    let big = "# padding\n".repeat(200_000);
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n";
    let cases: Vec<(&str, String, &'static str)> = vec![
        (
            "an unknown field",
            "scorer: magnitude\nsparsity: 0.5\nsparsty: 0.6\n".into(),
            "sparsty",
        ),
        (
            "sparsity 1.5",
            "scorer: magnitude\nsparsity: 1.5\n".into(),
            "sparsity",
        ),
        (
            "sparsity NaN",
            "scorer: magnitude\nsparsity: .nan\n".into(),
            "sparsity",
        ),
        (
            "a pattern 5:4",
            "scorer: magnitude\nsparsity: 0.5\npattern: \"5:4\"\n".into(),
            "5:4",
        ),
        (
            "an include regex that does not compile",
            "scorer: magnitude\nsparsity: 0.5\ninclude: [\"re:(\"]\n".into(),
            "re:(",
        ),
        (
            "calibration of 0 windows",
            "scorer: wanda\nsparsity: 0.5\ncalibration: {windows: 0}\n".into(),
            "windows",
        ),
        (
            "an unknown scorer",
            "scorer: nosuch\nsparsity: 0.5\n".into(),
            "nosuch",
        ),
        (
            "an llm-compressor modifier not supported",
            "sparsity_stage:\n  sparsity_modifiers:\n    QuantizationModifier: {scheme: W4A16}\n"
                .into(),
            "QuantizationModifier",
        ),
        (
            "YAML aliases expanding to 43 million nodes",
            bomb.into(),
            "recipe",
        ),
        (
            "lists nested 100,000 deep",
            format!("scorer: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
            "recipe",
        ),
        ("2 MB of comments", big, "at most"),
        (
            "not UTF-8",
            String::from_utf8_lossy(&[0xff, 0xfe, 0x00]).into_owned(),
            "recipe",
        ),
    ];
    for (i, (what, text, needle)) in cases.into_iter().enumerate() {
        let p = recipes.join(format!("r{i}.yaml"));
        if what == "not UTF-8" {
            std::fs::write(&p, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
        } else {
            std::fs::write(&p, text).unwrap();
        }
        let m = model.to_path_buf();
        out.push(Case::new(
            rc,
            what,
            "prune --dry-run: exit 1, naming it",
            move || {
                refused(
                    birdbone()
                        .args(["prune", "--quiet", "--dry-run", "--model"])
                        .arg(&m)
                        .arg("--recipe")
                        .arg(&p),
                    needle,
                )
            },
        ));
    }
    out
}
