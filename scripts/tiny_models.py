"""Small randomly initialised models of each family the runtime supports, written by
transformers (the .venv's pinned version) with their reference logits: what the parity tests
load with Birdbone and compare against.

    python scripts/tiny_models.py OUT_DIR

writes OUT_DIR/<family>/{config.json, model.safetensors} and OUT_DIR/<family>/reference.json
({"ids": [...], "logits": [[...], ...]} for every position) for:
- mistral: a sliding window (8) shorter than the sequence (40 tokens), GQA;
- qwen2: biases on q/k/v, GQA;
- llama3: Llama-3's rope scaling (rope_type llama3) with a short original context, GQA.
Every parameter, biases included, is drawn from N(0, 0.2), so nothing is trivially zero.
"""
import json
import os
import sys

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

out = sys.argv[1]
common = dict(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
              tie_word_embeddings=False, max_position_embeddings=256)
families = {
    "mistral": (MistralConfig(**common, sliding_window=8), MistralForCausalLM),
    "qwen2": (Qwen2Config(**common), Qwen2ForCausalLM),
    "llama3": (LlamaConfig(**common, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 32}), LlamaForCausalLM),
}
torch.manual_seed(0)
ids = torch.randint(0, common["vocab_size"], (1, 40))
for name, (config, cls) in families.items():
    config._attn_implementation = "eager"
    model = cls(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    d = os.path.join(out, name)
    model.save_pretrained(d)
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    with open(os.path.join(d, "reference.json"), "w") as f:
        json.dump({"ids": ids[0].tolist(), "logits": logits.tolist()}, f)
    print(name, d)
