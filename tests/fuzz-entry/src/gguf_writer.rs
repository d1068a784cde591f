//! A small GGUF writer for crafted files: a valid one-layer model to start from, and edits
//! that break it in chosen ways (the hostile-header tests) or in ways the fuzzer chooses
//! ([`Builder::from_edits`]).

/// A metadata value as GGUF writes it: type tag, then payload.
#[derive(Clone, Debug)]
pub enum V {
    /// uint32.
    U32(u32),
    /// float32.
    F32(f32),
    /// A string.
    Str(String),
    /// Any type tag with its payload already encoded (arrays, odd types, lies).
    Raw(u32, Vec<u8>),
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

impl V {
    /// A string value.
    pub fn str(s: &str) -> V {
        V::Str(s.into())
    }

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

/// An array of strings.
pub fn str_array(items: &[&str]) -> V {
    let mut p = 8u32.to_le_bytes().to_vec();
    p.extend((items.len() as u64).to_le_bytes());
    for s in items {
        string(&mut p, s);
    }
    V::Raw(9, p)
}

/// One tensor of the directory: name, dims in GGUF order (innermost first), GGML type, and an
/// offset (None: the next free one).
#[derive(Clone, Debug)]
pub struct T(pub String, pub Vec<u64>, pub u32, pub Option<u64>);

/// A GGUF file being built.
#[derive(Clone, Debug)]
pub struct Builder {
    /// Metadata, in file order.
    pub kv: Vec<(String, V)>,
    /// The tensor directory, in file order.
    pub tensors: Vec<T>,
}

/// Keys the edits choose among (those the importer reads, and a few it does not).
const KEYS: &[&str] = &[
    "general.architecture",
    "general.alignment",
    "llama.block_count",
    "llama.embedding_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.feed_forward_length",
    "llama.context_length",
    "llama.attention.key_length",
    "llama.attention.value_length",
    "llama.rope.dimension_count",
    "llama.rope.scaling.type",
    "llama.attention.layer_norm_rms_epsilon",
    "llama.rope.freq_base",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_space_prefix",
];

/// Values the edits choose among before falling back to raw input bits.
const NUMBERS: &[u32] = &[0, 1, 2, 3, 4, 8, 16, 31, 32, 64, 255, 4096, u32::MAX];
const WORDS: &[&str] = &[
    "llama",
    "qwen2",
    "gpt2",
    "gemma",
    "",
    "smollm",
    "qwen2",
    "llama-bpe",
    "none",
    "yarn",
    "a b",
];

/// Reads choices off the fuzzer's bytes (zeros once they run out).
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn pick<'t, X>(&mut self, from: &'t [X]) -> &'t X {
        &from[self.byte() as usize % from.len()]
    }
    fn number(&mut self) -> u32 {
        if self.byte() < 200 {
            *self.pick(NUMBERS)
        } else {
            self.u32()
        }
    }
    fn value(&mut self) -> V {
        match self.byte() % 6 {
            0 | 1 => V::U32(self.number()),
            2 => V::F32(f32::from_bits(self.u32())),
            3 => {
                let w: &&str = self.pick(WORDS);
                V::str(w)
            }
            4 => str_array(&["a", "b", "ab", "<unk>", "<0x41>"][..1 + self.byte() as usize % 5]),
            _ => {
                let tag = self.byte() as u32 % 14;
                let len = self.byte() as usize % 24;
                V::Raw(tag, (0..len).map(|_| self.byte()).collect())
            }
        }
    }
}

impl Builder {
    /// A valid one-layer Llama (hidden 8, 2 heads, 1 KV head, MLP 16, 4 byte-level tokens),
    /// F32.
    pub fn llama() -> Builder {
        let kv: Vec<(String, V)> = [
            ("general.architecture", V::str("llama")),
            ("llama.block_count", V::U32(1)),
            ("llama.embedding_length", V::U32(8)),
            ("llama.attention.head_count", V::U32(2)),
            ("llama.attention.head_count_kv", V::U32(1)),
            ("llama.feed_forward_length", V::U32(16)),
            ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
            ("llama.rope.freq_base", V::F32(10000.0)),
            ("tokenizer.ggml.model", V::str("gpt2")),
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

    /// [`Builder::llama`] with the edits `data` chooses.
    pub fn from_edits(data: &[u8]) -> Builder {
        let mut c = Choices(data);
        let mut b = Builder::llama();
        let edits = c.byte() % 8;
        for _ in 0..edits {
            match c.byte() % 6 {
                0 | 1 => {
                    let key = *c.pick(KEYS);
                    let v = c.value();
                    b = b.set(key, v);
                }
                2 => {
                    let key = *c.pick(KEYS);
                    b = b.remove(key);
                }
                _ => {
                    if b.tensors.is_empty() {
                        continue;
                    }
                    let i = c.byte() as usize % b.tensors.len();
                    let t = &mut b.tensors[i];
                    match c.byte() % 5 {
                        0 => t.1 = (0..c.byte() % 4).map(|_| c.number() as u64).collect(),
                        1 => t.2 = *c.pick(&[0u32, 1, 2, 3, 8, 12, 13, 14, 15, 30, 99]),
                        2 => t.3 = Some(c.number() as u64 * 32),
                        3 => {
                            t.0 = format!(
                                "blk.{}.{}",
                                c.number(),
                                c.pick(&["attn_q.weight", "attn_q.bias", "ffn_up.weight", "x"])
                            )
                        }
                        _ => {
                            b.tensors.remove(i);
                        }
                    }
                }
            }
        }
        b
    }

    /// `key` set to `v` (replacing any earlier value).
    pub fn set(mut self, key: &str, v: V) -> Builder {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.into(), v));
        self
    }

    /// `key` removed.
    pub fn remove(mut self, key: &str) -> Builder {
        self.kv.retain(|(k, _)| k != key);
        self
    }

    /// The tensor `name` edited.
    pub fn tensor(mut self, name: &str, edit: impl FnOnce(&mut T)) -> Builder {
        let t = self.tensors.iter_mut().find(|t| t.0 == name).expect(name);
        edit(t);
        self
    }

    /// The file's bytes. Tensor data is F32-sized for each tensor's elements (capped at 2^16),
    /// filled with small values.
    pub fn bytes(&self) -> Vec<u8> {
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
            offset += (n.min(1 << 16) * 4).div_ceil(32) * 32;
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend((0..offset / 4).flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes()));
        out
    }
}
