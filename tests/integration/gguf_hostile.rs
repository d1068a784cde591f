//! Crafted GGUF headers, each against the importer: every one is an error naming what is
//! wrong (never a panic, an abort or a hang), and nothing is left that looks like a model.

use birdbone_gguf::{import_llama, GgufFile};

/// A metadata value as GGUF writes it: type tag, then payload.
#[derive(Clone)]
enum V {
    U32(u32),
    F32(f32),
    Str(&'static str),
    /// Element type tag, count written, elements (already encoded, without tags).
    Raw(u32, Vec<u8>),
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl V {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            V::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(out, s);
            }
            V::Raw(tag, payload) => {
                out.extend(tag.to_le_bytes());
                out.extend(payload);
            }
        }
    }
}

fn str_array(items: &[&str]) -> V {
    let mut p = 8u32.to_le_bytes().to_vec();
    p.extend((items.len() as u64).to_le_bytes());
    for s in items {
        string(&mut p, s);
    }
    V::Raw(9, p)
}

/// One tensor of the directory: name, dims in GGUF order (innermost first), type, offset.
#[derive(Clone)]
struct T(String, Vec<u64>, u32, Option<u64>);

/// A valid one-layer Llama (hidden 8, 2 heads, 1 KV head, MLP 16, 4 byte-level tokens), F32.
struct Builder {
    kv: Vec<(String, V)>,
    tensors: Vec<T>,
}

impl Builder {
    fn llama() -> Builder {
        let kv: Vec<(String, V)> = [
            ("general.architecture", V::Str("llama")),
            ("llama.block_count", V::U32(1)),
            ("llama.embedding_length", V::U32(8)),
            ("llama.attention.head_count", V::U32(2)),
            ("llama.attention.head_count_kv", V::U32(1)),
            ("llama.feed_forward_length", V::U32(16)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("llama.rope.freq_base", V::F32(10000.0)),
            ("tokenizer.ggml.model", V::Str("gpt2")),
            ("tokenizer.ggml.tokens", str_array(&["a", "b", "c", "ab"])),
            ("tokenizer.ggml.merges", str_array(&["a b"])),
            ("tokenizer.ggml.bos_token_id", V::U32(0)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let t = |n: &str, d: &[u64]| T(n.into(), d.to_vec(), 0, None);
        let mut tensors = vec![
            t("token_embd.weight", &[8, 4]),
            t("output_norm.weight", &[8]),
        ];
        for (n, d) in [
            ("attn_norm.weight", vec![8]),
            ("ffn_norm.weight", vec![8]),
            ("attn_q.weight", vec![8, 8]),
            ("attn_k.weight", vec![8, 4]),
            ("attn_v.weight", vec![8, 4]),
            ("attn_output.weight", vec![8, 8]),
            ("ffn_gate.weight", vec![8, 16]),
            ("ffn_up.weight", vec![8, 16]),
            ("ffn_down.weight", vec![16, 8]),
        ] {
            tensors.push(t(&format!("blk.0.{n}"), &d));
        }
        Builder { kv, tensors }
    }
    fn set(mut self, key: &str, v: V) -> Builder {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.into(), v));
        self
    }
    fn remove(mut self, key: &str) -> Builder {
        self.kv.retain(|(k, _)| k != key);
        self
    }
    fn tensor(mut self, name: &str, edit: impl FnOnce(&mut T)) -> Builder {
        let t = self.tensors.iter_mut().find(|t| t.0 == name).expect(name);
        edit(t);
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.kv.len() as u64).to_le_bytes());
        for (k, v) in &self.kv {
            string(&mut out, k);
            v.write(&mut out);
        }
        let mut offset = 0u64;
        for T(name, dims, ty, fixed) in &self.tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend(fixed.unwrap_or(offset).to_le_bytes());
            let n: u64 = dims.iter().fold(1u64, |a, &d| a.saturating_mul(d));
            offset += (n.min(1 << 20) * 4).div_ceil(32) * 32;
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        // Small deterministic values, so a valid file imports to finite weights.
        out.extend((0..offset / 4).flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes()));
        out
    }
}

/// Imports the builder's file: the error text, or None when it imported.
fn import(b: &Builder) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.gguf");
    std::fs::write(&path, b.bytes()).unwrap();
    let out = dir.path().join("out");
    match import_llama(&path, &out) {
        Ok(_) => None,
        Err(e) => {
            assert!(
                !out.join("config.json").exists(),
                "a failed import left a config.json"
            );
            Some(e.to_string())
        }
    }
}

#[test]
fn the_builder_makes_a_file_that_imports() {
    assert_eq!(import(&Builder::llama()), None);
}

#[test]
fn crafted_headers_are_errors_that_name_the_field() {
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
            Builder::llama().set("llama.block_count", V::Str("1")),
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
            Builder::llama().set("llama.rope.scaling.type", V::Str("yarn")),
            "scaling",
        ),
        (
            "unknown architecture",
            Builder::llama().set("general.architecture", V::Str("gemma3")),
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
            Builder::llama().set("tokenizer.ggml.model", V::Str("rwkv")),
            "tokenizer.ggml.model",
        ),
        (
            "an unknown pre-tokenizer",
            Builder::llama().set("tokenizer.ggml.pre", V::Str("chameleon")),
            "tokenizer.ggml.pre",
        ),
    ];
    let mut failures = vec![];
    for (what, b, needle) in &cases {
        match import(b) {
            None => failures.push(format!("{what}: imported")),
            Some(e) if !e.contains(needle) => failures.push(format!("{what}: {e}")),
            Some(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn header_counts_past_the_file_are_refused_before_allocating() {
    let mut bytes = Builder::llama().bytes();
    // The tensor count, then the metadata count, each claiming 2^60.
    for at in [8usize, 16] {
        let mut b = bytes.clone();
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("counts.gguf");
        std::fs::write(&p, &b).unwrap();
        let e = GgufFile::open(&p).err().expect("opened").to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
    // A key whose length claims more bytes than the file has.
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("key.gguf");
    std::fs::write(&p, &bytes).unwrap();
    assert!(GgufFile::open(&p).is_err());
}
