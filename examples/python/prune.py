"""Prune a transformers model in place with Wanda through Birdbone's plugins, then generate.

    .venv/bin/python examples/python/prune.py [MODEL_DIR] [PROMPT]

MODEL_DIR defaults to the SmolLM2-135M folder the set-up imports (.cache/smollm2-135m). The model
is loaded by plain transformers, calibrated by forward hooks on C4 windows, and pruned 50% in
its own tensors (every data_ptr() stays where it was); generation then runs on the same object.
"""

import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import birdbone

ROOT = Path(__file__).resolve().parents[2]
model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".cache" / "smollm2-135m"
prompt = sys.argv[2] if len(sys.argv) > 2 else "The capital of France is"
device = "cuda" if torch.cuda.is_available() else "cpu"

tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()


def generate() -> str:
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=20, do_sample=False,
                             eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id)
    return prompt + tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


print(f"dense:  {generate()}")

# Calibration: 8 windows of 512 tokens of C4, tokenized as `birdbone prune` tokenizes them.
t = time.time()
windows = birdbone.calibration_windows(model_dir, "c4.utf8", windows=8, length=512)
stats = birdbone.calibrate(model, windows, batch_size=4)
print(f"calibrated on {len(windows)} windows in {time.time() - t:.1f} s")

ptr = model.model.layers[0].mlp.up_proj.weight.data_ptr()
result = birdbone.prune(model, ROOT / "examples" / "recipes" / "wanda-50.yaml", stats=stats)
assert model.model.layers[0].mlp.up_proj.weight.data_ptr() == ptr  # in place
r = result.report
print(f"pruned {r['pruned']:,} of {r['total']:,} weights ({100 * r['sparsity']:.2f}%) on {device}: "
      f"plan {r['plan_seconds']:.3f} s, commit {r['commit_seconds']:.3f} s")
print(f"pruned: {generate()}")
