"""Reference logits for Birdbone's Llama runtime: Hugging Face transformers' LlamaForCausalLM on
the same model folder (config.json + model.safetensors), in float32 on the CPU.

    python scripts/reference_logits.py MODEL_DIR '[1, 2, 3]'  ->  JSON {"logits": [[...], ...]}

Prints the logits of the last 4 positions (all positions when shorter), as JSON on stdout. The
integration test runs it and compares with the runtime's own logits.
"""
import json
import sys

import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

model_dir, ids = sys.argv[1], json.loads(sys.argv[2])
config = LlamaConfig.from_json_file(f"{model_dir}/config.json")
config.dtype = torch.float32
with torch.device("cpu"):
    model = LlamaForCausalLM(config).eval()
state = load_file(f"{model_dir}/model.safetensors")
missing, unexpected = model.load_state_dict(state, strict=False)
# Tied embeddings: lm_head is not in the checkpoint.
assert set(missing) <= {"lm_head.weight"}, missing
assert not unexpected, unexpected
if config.tie_word_embeddings:
    model.tie_weights()
with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].float()
print(json.dumps({"logits": logits[-4:].tolist(), "transformers": __import__("transformers").__version__}))
