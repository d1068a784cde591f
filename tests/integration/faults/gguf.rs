//! Crafted GGUF headers against the importer (the same path `import-gguf` takes, in process):
//! each is an error naming what is wrong, never a panic, an abort or a hang, and nothing is
//! left that looks like a model. Plus files cut short at every part of the real checkpoint.

use birdbone_fuzz_entry::gguf_writer::{str_array, Builder, V};
use birdbone_gguf::{import_llama, GgufFile};
use birdbone_tests::*;

use super::{Case, Failure};

const CHECKED: &str = "import in process: an error naming the field, no config.json written";

/// Imports `bytes`: Ok(error text), or the failure.
fn import_refused(bytes: &[u8], needle: &str) -> Result<String, (Failure, String)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.gguf");
    std::fs::write(&path, bytes).unwrap();
    let out = dir.path().join("out");
    match import_llama(&path, &out) {
        Ok(_) => Err((Failure::Silent, "imported".into())),
        Err(_) if out.join("config.json").exists() => {
            Err((Failure::Silent, "a failed import left a config.json".into()))
        }
        Err(e) if !e.to_string().contains(needle) => {
            Err((Failure::Silent, format!("does not name {needle:?}: {e}")))
        }
        Err(_) => Ok(format!("refused, names `{needle}`")),
    }
}

pub fn cases() -> Vec<Case> {
    let nested = {
        // An array of arrays of arrays ... 10,000 deep.
        let mut p = vec![];
        for _ in 0..10_000 {
            p.extend(9u32.to_le_bytes());
            p.extend(1u64.to_le_bytes());
        }
        p.extend(4u32.to_le_bytes());
        p.extend(1u64.to_le_bytes());
        p.extend(7u32.to_le_bytes());
        V::Raw(9, p)
    };
    let huge_array = {
        let mut p = 4u32.to_le_bytes().to_vec();
        p.extend((1u64 << 40).to_le_bytes());
        V::Raw(9, p)
    };
    let cases: Vec<(&str, Builder, &str)> = vec![
        (
            "zero heads",
            Builder::llama().set("llama.attention.head_count", V::U32(0)),
            "head_count",
        ),
        (
            "zero KV heads",
            Builder::llama().set("llama.attention.head_count_kv", V::U32(0)),
            "head_count_kv",
        ),
        (
            "heads not dividing the width",
            Builder::llama().set("llama.attention.head_count", V::U32(3)),
            "multiple",
        ),
        (
            "KV heads not dividing heads",
            Builder::llama()
                .set("llama.attention.head_count", V::U32(4))
                .set("llama.attention.head_count_kv", V::U32(3)),
            "multiple",
        ),
        (
            "absurd layer count",
            Builder::llama().set("llama.block_count", V::U32(4_000_000_000)),
            "block_count",
        ),
        (
            "zero layers",
            Builder::llama().set("llama.block_count", V::U32(0)),
            "block_count",
        ),
        (
            "absurd width",
            Builder::llama().set("llama.embedding_length", V::U32(u32::MAX)),
            "embedding_length",
        ),
        (
            "no block count",
            Builder::llama().remove("llama.block_count"),
            "block_count",
        ),
        (
            "block count as a string",
            Builder::llama().set("llama.block_count", V::str("1")),
            "block_count",
        ),
        (
            "negative epsilon",
            Builder::llama().set("llama.attention.layer_norm_rms_epsilon", V::F32(-1e-5)),
            "epsilon",
        ),
        (
            "NaN rope theta",
            Builder::llama().set("llama.rope.freq_base", V::F32(f32::NAN)),
            "freq_base",
        ),
        (
            "infinite rope theta",
            Builder::llama().set("llama.rope.freq_base", V::F32(f32::INFINITY)),
            "freq_base",
        ),
        (
            "odd head width",
            Builder::llama().set("llama.attention.key_length", V::U32(3)),
            "odd",
        ),
        (
            "partial rotary",
            Builder::llama().set("llama.rope.dimension_count", V::U32(2)),
            "dimension_count",
        ),
        (
            "rope scaling",
            Builder::llama().set("llama.rope.scaling.type", V::str("yarn")),
            "scaling",
        ),
        (
            "unknown architecture",
            Builder::llama().set("general.architecture", V::str("gemma3")),
            "architecture",
        ),
        (
            "alignment zero",
            Builder::llama().set("general.alignment", V::U32(0)),
            "alignment",
        ),
        (
            "alignment not a power of two",
            Builder::llama().set("general.alignment", V::U32(48)),
            "alignment",
        ),
        (
            "alignment huge",
            Builder::llama().set("general.alignment", V::U32(1 << 30)),
            "alignment",
        ),
        (
            "arrays nested 10,000 deep",
            Builder::llama().set("x.nested", nested),
            "nests",
        ),
        (
            "an array of 2^40 elements",
            Builder::llama().set("x.huge", huge_array),
            "corrupt",
        ),
        (
            "unknown value type",
            Builder::llama().set("x.weird", V::Raw(99, vec![])),
            "unknown value type",
        ),
        (
            "dimensions overflowing",
            Builder::llama().tensor("output_norm.weight", |t| t.1 = vec![u64::MAX, 3]),
            "dimensions",
        ),
        (
            "offset past any file",
            Builder::llama().tensor("output_norm.weight", |t| t.3 = Some(u64::MAX - 31)),
            "offset",
        ),
        (
            "offset unaligned",
            Builder::llama().tensor("output_norm.weight", |t| t.3 = Some(4)),
            "alignment",
        ),
        (
            "shape against the header",
            Builder::llama().tensor("blk.0.attn_q.weight", |t| t.1 = vec![8, 6]),
            "shape",
        ),
        (
            "zero-sized dimension",
            Builder::llama().tensor("blk.0.attn_q.weight", |t| t.1 = vec![8, 0]),
            "shape",
        ),
        (
            "rank 9",
            Builder::llama().tensor("output_norm.weight", |t| t.1 = vec![1; 9]),
            "dimensions",
        ),
        (
            "duplicate tensor",
            Builder::llama().tensor("blk.0.ffn_up.weight", |t| {
                t.0 = "blk.0.ffn_gate.weight".into()
            }),
            "twice",
        ),
        (
            "tensor beyond the layers",
            Builder::llama().tensor("blk.0.ffn_up.weight", |t| {
                t.0 = "blk.7.ffn_up.weight".into()
            }),
            "unexpected tensor",
        ),
        (
            "layer written as 00",
            Builder::llama().tensor("blk.0.ffn_up.weight", |t| {
                t.0 = "blk.00.ffn_up.weight".into()
            }),
            "unexpected tensor",
        ),
        (
            "a bias in a llama",
            Builder::llama().tensor("blk.0.ffn_up.weight", |t| {
                t.0 = "blk.0.attn_q.bias".into();
                t.1 = vec![8];
            }),
            "unexpected tensor",
        ),
        (
            "unknown tensor type",
            Builder::llama().tensor("output_norm.weight", |t| t.2 = 1234),
            "GGML type",
        ),
        (
            "embeddings missing",
            Builder::llama().tensor("token_embd.weight", |t| t.0 = "token_embd.other".into()),
            "unexpected tensor",
        ),
        (
            "fewer embedding rows than tokens",
            Builder::llama().tensor("token_embd.weight", |t| t.1 = vec![8, 3]),
            "rows",
        ),
        (
            "BOS id out of the vocabulary",
            Builder::llama().set("tokenizer.ggml.bos_token_id", V::U32(99)),
            "bos_token_id",
        ),
        (
            "a token repeated",
            Builder::llama().set("tokenizer.ggml.tokens", str_array(&["a", "b", "a", "ab"])),
            "repeats",
        ),
        (
            "token types too short",
            Builder::llama().set("tokenizer.ggml.token_type", str_array(&["1"])),
            "token_type",
        ),
        (
            "a merge without a space",
            Builder::llama().set("tokenizer.ggml.merges", str_array(&["ab"])),
            "merges",
        ),
        (
            "no tokens",
            Builder::llama().remove("tokenizer.ggml.tokens"),
            "tokens",
        ),
        (
            "an unknown tokenizer",
            Builder::llama().set("tokenizer.ggml.model", V::str("rwkv")),
            "tokenizer.ggml.model",
        ),
        (
            "an unknown pre-tokenizer",
            Builder::llama().set("tokenizer.ggml.pre", V::str("chameleon")),
            "tokenizer.ggml.pre",
        ),
    ];
    let mut out: Vec<Case> = cases
        .into_iter()
        .map(|(what, b, needle)| {
            let bytes = b.bytes();
            Case::new("GGUF headers", what, CHECKED, move || {
                import_refused(&bytes, needle)
            })
        })
        .collect();
    out.push(Case::new(
        "GGUF headers",
        "the crafted model itself (the control case)",
        "imports, with 11 tensors",
        || {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("ok.gguf");
            std::fs::write(&p, Builder::llama().bytes()).unwrap();
            match import_llama(&p, &dir.path().join("out")) {
                Ok(s) if s.tensors == 11 => Ok("imports".into()),
                Ok(s) => Err((Failure::Silent, format!("{} tensors", s.tensors))),
                Err(e) => Err((Failure::Silent, e.to_string())),
            }
        },
    ));
    for (field, at) in [("the tensor count", 8usize), ("the metadata count", 16)] {
        out.push(Case::new(
            "GGUF headers",
            format!("{field} claiming 2^60"),
            "open: refused before allocating",
            move || {
                let mut b = Builder::llama().bytes();
                b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
                import_refused(&b, "corrupt")
            },
        ));
    }
    out.push(Case::new(
        "GGUF headers",
        "a key length past the end of the file",
        "open: refused",
        || {
            let mut b = Builder::llama().bytes();
            b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
            import_refused(&b, "truncated")
        },
    ));
    let real = std::fs::read(real_gguf()).unwrap();
    for cut in [3usize, 24, 1_000, 1_000_000, real.len() - 10] {
        let bytes = real[..cut].to_vec();
        out.push(Case::new(
            "GGUF files",
            format!("the real SmolLM2 file cut at {cut} bytes"),
            "open: an error saying truncated",
            move || {
                let dir = tempfile::tempdir().unwrap();
                let p = dir.path().join("cut.gguf");
                std::fs::write(&p, &bytes).unwrap();
                match GgufFile::open(&p) {
                    Ok(_) => Err((Failure::Silent, "opened".into())),
                    Err(e) if e.to_string().contains("truncated") => {
                        Ok("refused, names `truncated`".into())
                    }
                    Err(e) => Err((Failure::Silent, e.to_string())),
                }
            },
        ));
    }
    out
}
