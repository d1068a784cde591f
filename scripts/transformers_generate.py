"""Greedy continuation of a prompt by plain transformers, from a model folder (for instance one
`birdbone prune` wrote): what a user of the pruned model would run.

    .venv/bin/python scripts/transformers_generate.py MODEL_DIR "The capital of France is" [TOKENS]

Tokenizes without special tokens and decodes greedily in float32, as `birdbone generate` does,
so the two print the same continuation when their logits agree.
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, prompt = sys.argv[1], sys.argv[2]
tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 24
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
with torch.no_grad():
    out = model.generate(ids, max_new_tokens=tokens, do_sample=False, eos_token_id=model.config.eos_token_id,
                         pad_token_id=model.config.eos_token_id)
print(prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
