"""A GGUF file of K-quantised tensors, written by the `gguf` package (llama.cpp's own Python
reader and writer, pinned in .venv), with that package's dequantisation of each as the
reference for Birdbone's importer.

    python scripts/gguf_kquants.py OUT.gguf OUT.json

The blocks are random bytes (every bit pattern is a valid block) with finite random f16 scales,
so every code path of each format is exercised.
"""
import json
import sys

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T, GGUFWriter, quants

path, ref_path = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
writer = GGUFWriter(path, "llama")
reference = {}
rows, cols = 6, 768  # three super-blocks per row
for name, qt, f16_fields in [("q4_k", T.Q4_K, (0, 2)), ("q5_k", T.Q5_K, (0, 2)), ("q6_k", T.Q6_K, (208,))]:
    block, size = GGML_QUANT_SIZES[qt]
    n = rows * cols // block
    raw = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in f16_fields:
        raw[:, off:off + 2] = rng.normal(0.0, 0.05, n).astype(np.float16).view(np.uint8).reshape(n, 2)
    data = raw.reshape(rows, cols // block * size)
    writer.add_tensor(name, data, raw_dtype=qt)
    reference[name] = {"shape": [rows, cols],
                       "values": quants.dequantize(data, qt).astype(np.float32).reshape(-1).tolist()}
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
with open(ref_path, "w") as f:
    json.dump(reference, f)
