//! llm-compressor recipes, mapped one to one onto a [`Recipe`].
//!
//! Accepted shape: top-level `<name>_stage` maps (an optional `run_type: oneshot` and
//! `<name>_modifiers` groups), or `<name>_modifiers` groups at the top level. Exactly one
//! modifier in all, one of:
//!
//! | modifier | Birdbone |
//! | --- | --- |
//! | `WandaPruningModifier` | scorer `wanda`; strategy `layerwise` with `scope: row` (the paper's per-output comparison), or `nm` with a `mask_structure` N:M |
//! | `SparseGPTModifier` | strategy `sparsegpt` (unstructured, or the N:M pattern of `mask_structure`), sequential calibration (llm-compressor's layer-by-layer pipeline); `block_size` and `dampening_frac` become its `blocksize` and `percdamp` |
//!
//! Modifier keys: `sparsity` (a number), `mask_structure` (`"0:0"` unstructured, or `"N:M"`
//! pruning N of every M, as llm-compressor counts), `targets` (`Linear`, a decoder-layer class
//! such as `LlamaDecoderLayer`, a module name, or `re:` regexes on module names), `ignore`
//! (module names or `re:` regexes), `sequential_update` (true: sequential calibration). Any
//! other key, modifier or top-level entry is an error naming it.

use serde_json::Value;

use crate::{
    error::{Error, Result},
    recipe::{Calibration, CalibrationMode, ComponentSpec, NmPattern, Recipe, Scalar},
};

/// Whether a parsed recipe file is in llm-compressor's shape.
pub fn is_llm_compressor(v: &Value) -> bool {
    v.as_object().is_some_and(|m| {
        m.keys()
            .any(|k| k.ends_with("_stage") || k.ends_with("_modifiers"))
    })
}

const MODIFIER_KEYS: &[&str] = &[
    "sparsity",
    "mask_structure",
    "targets",
    "ignore",
    "sequential_update",
    "block_size",
    "dampening_frac",
];

/// Classes whose every Linear weight is a target.
const LAYER_CLASSES: &[&str] = &[
    "LlamaDecoderLayer",
    "MistralDecoderLayer",
    "Qwen2DecoderLayer",
];

fn invalid(message: String) -> Error {
    Error::Invalid(format!("llm-compressor recipe: {message}"))
}

/// The one modifier of the recipe, with its name.
fn find_modifier(v: &Value) -> Result<(String, serde_json::Map<String, Value>)> {
    let top = v.as_object().expect("checked by is_llm_compressor");
    let mut groups = vec![];
    for (k, val) in top {
        if k.ends_with("_stage") {
            let stage = val
                .as_object()
                .ok_or_else(|| invalid(format!("'{k}' is not a map")))?;
            for (gk, gv) in stage {
                if gk == "run_type" {
                    if gv.as_str() != Some("oneshot") {
                        return Err(invalid(format!(
                            "{k}.run_type is {gv}; only oneshot is accepted"
                        )));
                    }
                } else if gk.ends_with("_modifiers") {
                    groups.push((format!("{k}.{gk}"), gv));
                } else {
                    return Err(invalid(format!(
                        "unknown key '{k}.{gk}' (accepted: run_type, *_modifiers)"
                    )));
                }
            }
        } else if k.ends_with("_modifiers") {
            groups.push((k.clone(), val));
        } else {
            return Err(invalid(format!(
                "unknown top-level key '{k}' (accepted: *_stage, *_modifiers)"
            )));
        }
    }
    let mut found = vec![];
    for (path, g) in groups {
        let g = g
            .as_object()
            .ok_or_else(|| invalid(format!("'{path}' is not a map of modifiers")))?;
        for (name, args) in g {
            let args = match args {
                Value::Object(m) => m.clone(),
                Value::Null => Default::default(),
                _ => {
                    return Err(invalid(format!(
                        "'{path}.{name}' is not a map of arguments"
                    )))
                }
            };
            found.push((name.clone(), args));
        }
    }
    match found.len() {
        1 => Ok(found.pop().expect("one")),
        0 => Err(invalid("no modifier found".into())),
        n => Err(invalid(format!(
            "{n} modifiers ({}); Birdbone runs one pruning modifier per recipe",
            found
                .iter()
                .map(|f| f.0.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| invalid(format!("'{key}' entries must be text, got {x}")))
            })
            .collect(),
        other => Err(invalid(format!(
            "'{key}' must be text or a list, got {other}"
        ))),
    }
}

/// A module name or `re:` regex as a [`crate::ParamFilter`] pattern.
fn module_pattern(t: &str) -> String {
    if t.starts_with("re:") {
        t.to_string()
    } else {
        format!("re:{}$", regex::escape(t))
    }
}

/// The Birdbone recipe an llm-compressor recipe asks for.
pub fn to_recipe(v: &Value) -> Result<Recipe> {
    let (modifier, args) = find_modifier(v)?;
    let sparsegpt = match modifier.as_str() {
        "WandaPruningModifier" => false,
        "SparseGPTModifier" => true,
        other => {
            return Err(invalid(format!(
                "modifier '{other}' is not supported (accepted: WandaPruningModifier, SparseGPTModifier)"
            )))
        }
    };
    for k in args.keys() {
        if !MODIFIER_KEYS.contains(&k.as_str()) {
            return Err(invalid(format!(
                "{modifier}: unknown key '{k}' (accepted: {})",
                MODIFIER_KEYS.join(", ")
            )));
        }
    }
    for k in ["block_size", "dampening_frac"] {
        if !sparsegpt && args.contains_key(k) {
            return Err(invalid(format!(
                "{modifier}: '{k}' is a SparseGPTModifier setting"
            )));
        }
    }
    let mut r = Recipe {
        scorer: ComponentSpec::named(if sparsegpt { "magnitude" } else { "wanda" }),
        ..Recipe::default()
    };
    r.sparsity = match args.get("sparsity") {
        None => 0.5,
        Some(s) => s
            .as_f64()
            .ok_or_else(|| invalid(format!("{modifier}.sparsity must be a number, got {s}")))?,
    };
    let structure = match args.get("mask_structure") {
        None => "0:0".to_string(),
        Some(s) => s
            .as_str()
            .ok_or_else(|| {
                invalid(format!(
                    "{modifier}.mask_structure must be text like \"2:4\""
                ))
            })?
            .to_string(),
    };
    // "0:M" prunes none of M: llm-compressor reads it as unstructured, as "0:0".
    let unstructured = structure == "0:0" || structure.starts_with("0:");
    if unstructured {
        let mut strategy = ComponentSpec::named("layerwise");
        strategy
            .params
            .insert("scope".into(), Scalar::Text("row".into()));
        r.strategy = strategy;
    } else {
        // llm-compressor's "N:M" prunes N of every M; Birdbone's pattern keeps N of M.
        let p: NmPattern = structure
            .parse()
            .map_err(|e: String| invalid(format!("{modifier}.mask_structure: {e}")))?;
        r.pattern = Some(NmPattern {
            n: p.m - p.n,
            m: p.m,
        });
        r.strategy = ComponentSpec::named("nm");
    }
    if sparsegpt {
        // SparseGPT decides its own masks, unstructured or N:M: one strategy for both.
        let mut strategy = ComponentSpec::named("sparsegpt");
        if let Some(b) = args.get("block_size") {
            let b = b.as_i64().ok_or_else(|| {
                invalid(format!("{modifier}.block_size must be an integer, got {b}"))
            })?;
            strategy.params.insert("blocksize".into(), Scalar::Int(b));
        }
        if let Some(d) = args.get("dampening_frac") {
            let d = d.as_f64().ok_or_else(|| {
                invalid(format!(
                    "{modifier}.dampening_frac must be a number, got {d}"
                ))
            })?;
            strategy.params.insert("percdamp".into(), Scalar::Float(d));
        }
        r.strategy = strategy;
    }
    if let Some(t) = args.get("targets") {
        for t in strings(t, "targets")? {
            if t == "Linear" || t == "__ALL__" {
                continue;
            }
            if LAYER_CLASSES.contains(&t.as_str()) {
                r.include.push(r"re:model\.layers\.\d+$".into());
            } else if t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !t.contains('.') {
                return Err(invalid(format!(
                    "target class '{t}' is not known (accepted: Linear, {})",
                    LAYER_CLASSES.join(", ")
                )));
            } else {
                r.include.push(module_pattern(&t));
            }
        }
    }
    if let Some(i) = args.get("ignore") {
        for t in strings(i, "ignore")? {
            if t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && !t.contains('.') {
                return Err(invalid(format!(
                    "ignore: class names such as '{t}' are not accepted; name modules or give re: patterns"
                )));
            }
            r.exclude.push(module_pattern(&t));
        }
    }
    let sequential = match args.get("sequential_update") {
        // llm-compressor runs SparseGPT through its sequential pipeline, as the paper does.
        None => sparsegpt,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(format!(
                "{modifier}.sequential_update must be true or false, got {other}"
            )))
        }
    };
    r.calibration = Some(Calibration {
        mode: if sequential {
            CalibrationMode::Sequential
        } else {
            CalibrationMode::OnePass
        },
        ..Calibration::default()
    });
    Ok(r)
}
