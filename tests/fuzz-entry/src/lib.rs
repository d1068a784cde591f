//! One entry point per parser that reads outside input. Each takes the bytes of a file, runs
//! everything Birdbone does with such a file short of writing output, and returns; an error is
//! a fine outcome, a panic, an abort or a hang is a bug. `fuzz/` drives these with libFuzzer;
//! `tests/replay.rs` runs every saved input through them on stable Rust.

use std::path::Path;

pub mod gguf_writer;

/// A parser's entry point.
pub type Entry = fn(&[u8]);

/// The parsers, by the name of their fuzz target.
pub const TARGETS: &[(&str, Entry)] = &[
    ("gguf", gguf),
    ("gguf_structured", gguf_structured),
    ("safetensors", safetensors_file),
    ("index", index),
    ("config", config),
    ("masks", masks),
    ("recipe", recipe),
    ("tokenizer", tokenizer),
];

/// A GGUF file, as `import-gguf` reads it: header, tensor directory, the import plan (every
/// hyperparameter, tensor and the tokenizer checked), every tensor dequantised, and the rebuilt
/// tokenizer.json loaded.
pub fn gguf(data: &[u8]) {
    let Ok(f) = birdbone_gguf::GgufFile::from_bytes(data.to_vec(), Path::new("fuzz.gguf")) else {
        return;
    };
    for t in &f.tensors {
        let _ = f.tensor_f32(t);
    }
    let Ok(p) = birdbone_gguf::plan_import(&f) else {
        return;
    };
    for (t, name) in &p.tensors {
        let _ = birdbone_gguf::convert_tensor(&f, &p, t, name);
    }
    let _ = birdbone_model_folder::tokenizer_from_bytes(
        p.tokenizer.to_string().as_bytes(),
        Path::new("fuzz.json"),
    );
}

/// A GGUF file built from a valid one-layer model with edits the input chooses (keys set,
/// removed or retyped; tensors renamed, reshaped, retyped, moved): reaches the importer's checks
/// far more often than raw bytes do.
pub fn gguf_structured(data: &[u8]) {
    gguf(&gguf_writer::Builder::from_edits(data).bytes());
}

/// A safetensors file, as the model loader reads it: Birdbone's header check, then the
/// safetensors crate's parser (the one libtorch's reader goes through).
pub fn safetensors_file(data: &[u8]) {
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        if n <= (data.len() - 8) as u64 {
            let (header, rest) = data[8..].split_at(n as usize);
            let _ = birdbone_model_folder::parse_header(
                header,
                rest.len() as u64,
                Path::new("fuzz.safetensors"),
            );
        }
    }
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for (_, v) in st.tensors() {
            let _ = v.data().len();
        }
    }
}

/// `model.safetensors.index.json`.
pub fn index(data: &[u8]) {
    let _ = birdbone_model_folder::parse_index(data, Path::new("fuzz.index.json"));
}

/// `config.json`.
pub fn config(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(c) = birdbone_model_folder::LlamaConfig::from_json(&v) {
            let mut inv_freq = vec![1.0f64; c.head_dim() / 2];
            c.rope_scaling.apply(&mut inv_freq);
            let _ = c.eos_ids();
        }
    }
}

/// A mask file (`masks.safetensors`).
pub fn masks(data: &[u8]) {
    let _ = birdbone_host::mask_file::read_bytes(data, Path::new("fuzz.masks"));
}

/// A recipe, as YAML and as JSON.
pub fn recipe(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        for json in [false, true] {
            if let Ok(r) = birdbone_host::Recipe::from_text(text, json, Path::new("fuzz.yaml")) {
                let _ = r.to_yaml();
                let _ = r.pass_config();
            }
        }
    }
}

/// A `tokenizer.json`, loaded and used on a short text.
pub fn tokenizer(data: &[u8]) {
    if let Ok(t) = birdbone_model_folder::tokenizer_from_bytes(data, Path::new("fuzz.json")) {
        if let Ok(e) = t.encode("Hello, world 123 ü 東京", false) {
            let _ = t.decode(e.get_ids(), false);
        }
    }
}
