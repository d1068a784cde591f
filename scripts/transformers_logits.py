"""Logits of a model folder loaded the plain way a user would: transformers'
AutoModelForCausalLM.from_pretrained, in float32 on the CPU.

    python scripts/transformers_logits.py MODEL_DIR '[1, 2, 3]'  ->  JSON {"logits": [[...], ...]}

Prints the logits of the last 4 positions and the dtype config.json declares. The hand-off
test runs it on a folder `birdbone prune` wrote.
"""
import json
import sys

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

model_dir, ids = sys.argv[1], json.loads(sys.argv[2])
declared = str(getattr(AutoConfig.from_pretrained(model_dir), "dtype", None) or "")
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].float()
zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("proj.weight"))
print(json.dumps({
    "logits": logits[-4:].tolist(),
    "declared_dtype": declared,
    "zero_proj_weights": zeros,
    "transformers": transformers.__version__,
}))
