"""GGUF files of the kinds people download, written by the `gguf` package (llama.cpp's own
Python writer, pinned in .venv), with what transformers makes of them as the reference for
Birdbone's importer.

    python scripts/gguf_families.py OUT_DIR CALIBRATION_TEXT SMOLLM2_GGUF SAMPLE_TEXT

writes, for each of
- llama-spm: a Llama with a SentencePiece vocabulary (scores, byte fallback, `<unk>`/`<s>`/`</s>`),
  learned here by byte-pair merges over CALIBRATION_TEXT the way SentencePiece's BPE trainer
  orders them; q/k rows permuted as llama.cpp's converter does; projections stored Q8_0 and Q4_0;
- qwen2: a Qwen2 (biases on q/k/v, tied embeddings) with SmolLM2's byte-level BPE vocabulary
  and Qwen2's pre-tokenizer,
OUT_DIR/<name>.gguf and OUT_DIR/<name>.json with
- "text", "token_ids": SAMPLE_TEXT's ids from the tokenizer transformers builds from the file;
- "ids", "logits": a transformers model holding exactly the file's (dequantised) weights, run on
  the first 40 of those ids.
"""
import json
import os
import re
import sys
from collections import Counter

import numpy as np
import torch
from gguf import GGMLQuantizationType as T, GGUFReader, GGUFWriter, quants
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

out, calibration, smollm2, sample_path = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
sample = open(sample_path, encoding="utf-8").read()[:6000] + " Ünïcödé, 東京 and 🦴 fall back to bytes.\n\n  two spaces"
torch.manual_seed(0)
rng = np.random.default_rng(0)

NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def sentencepiece_vocab(text, merges=400):
    """Pieces, scores and types as SentencePiece's BPE model lists them: specials, the 256 byte
    pieces, merged pieces best first (score -rank), then single characters."""
    words = Counter("\u2581" + w for w in re.split(r"\s+", text) if w)
    chars = Counter()
    for w, n in words.items():
        for c in w:
            chars[c] += n
    alphabet = sorted(c for c, n in chars.items() if n >= 3)
    split = {tuple(c if c in alphabet else "?" for c in w): n for w, n in words.items()}
    learned = []
    for _ in range(merges):
        pairs = Counter()
        for w, n in split.items():
            for a, b in zip(w, w[1:]):
                if "?" not in (a, b):
                    pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        learned.append(a + b)
        merged = {}
        for w, n in split.items():
            o, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    o.append(a + b)
                    i += 2
                else:
                    o.append(w[i])
                    i += 1
            merged[tuple(o)] = merged.get(tuple(o), 0) + n
        split = merged
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(pieces)
    for rank, p in enumerate(dict.fromkeys(learned)):
        pieces.append(p), types.append(NORMAL), scores.append(-float(rank))
    for c in alphabet:
        if c not in pieces:
            pieces.append(c), types.append(NORMAL), scores.append(-float(len(scores)))
    return pieces, scores, types


def permute(w, heads):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.*)", hf)
    tail = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
            "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
            "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
            "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
            "self_attn.v_proj.bias": "attn_v.bias", "mlp.gate_proj.weight": "ffn_gate.weight",
            "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}[m.group(2)]
    return f"blk.{m.group(1)}.{tail}"


def write(name, arch, model, cfg, tokenizer, quantize, permute_qk):
    path = os.path.join(out, f"{name}.gguf")
    w = GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    tokenizer(w)
    state = model.state_dict()
    with torch.no_grad():
        for hf, t in state.items():
            if hf == "lm_head.weight" and cfg.tie_word_embeddings:
                continue
            a = t.float().numpy()
            qt = quantize(hf)
            if qt is not None:
                a = quants.dequantize(quants.quantize(a, qt), qt)
                t.copy_(torch.from_numpy(a))  # the reference model holds what the file holds
            stored = a
            if permute_qk and (hf.endswith("q_proj.weight") or hf.endswith("k_proj.weight")):
                heads = cfg.num_attention_heads if "q_proj" in hf else cfg.num_key_value_heads
                stored = permute(a, heads)
            if qt is None:
                w.add_tensor(gguf_name(hf), np.ascontiguousarray(stored, dtype=np.float32))
            else:
                w.add_tensor(gguf_name(hf), quants.quantize(np.ascontiguousarray(stored), qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tok = AutoTokenizer.from_pretrained(out, gguf_file=f"{name}.gguf")
    token_ids = tok.encode(sample, add_special_tokens=False)
    ids = torch.tensor([token_ids[:40]])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump({"text": sample, "token_ids": token_ids, "ids": ids[0].tolist(), "logits": logits.tolist()}, f)
    print(name, path, len(token_ids), "tokens")


def randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model.eval()


common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256)

# Llama with a SentencePiece vocabulary.
pieces, scores, types = sentencepiece_vocab(open(calibration, encoding="utf-8").read()[:60000])
cfg = LlamaConfig(**common, vocab_size=len(pieces), tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
cfg._attn_implementation = "eager"


def spm(w):
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)


proj = re.compile(r".*(q|k|v|o|gate|up|down)_proj\.weight")
write("llama-spm", "llama", randomize(LlamaForCausalLM(cfg)), cfg, spm,
      lambda n: (T.Q4_0 if "mlp" in n else T.Q8_0) if proj.fullmatch(n) else None, permute_qk=True)

# Qwen2 with SmolLM2's byte-level vocabulary and Qwen2's split.
r = GGUFReader(smollm2)


def field(key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") if f.types[-1].name == "STRING" else int(f.parts[i][0]) for i in f.data]


tokens, merges, token_types = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges"), field("tokenizer.ggml.token_type")
cfg = Qwen2Config(**common, vocab_size=len(tokens), tie_word_embeddings=True, use_sliding_window=False)
cfg._attn_implementation = "eager"


def bpe(w):
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


write("qwen2", "qwen2", randomize(Qwen2ForCausalLM(cfg)), cfg, bpe, lambda n: None, permute_qk=False)
