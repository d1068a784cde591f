"""Fine-tune with transformers' Trainer while Birdbone prunes on a schedule and holds the masks
after every optimizer step.

    .venv/bin/python examples/python/finetune.py [MODEL_DIR] [STEPS]

Wanda is gradually raised from 10% to 50% over the first steps, scored with the activations of
the training forwards themselves (forward hooks); the sparsity is exact after every step.
"""

import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

import birdbone

ROOT = Path(__file__).resolve().parents[2]
model_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".cache" / "smollm2-135m"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 12
device = "cuda" if torch.cuda.is_available() else "cpu"

recipe = {
    "scorer": "wanda",
    "strategy": {"name": "layerwise", "params": {"scope": "row"}},
    "sparsity": 0.5,
    "training": {"schedule": {"kind": "gradual", "start_step": 2, "end_step": 2 + 2 * max(1, steps // 4), "every": 2,
                              "initial_sparsity": 0.1, "final_sparsity": 0.5, "curve": "cubic"}},
}
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
windows = birdbone.calibration_windows(model_dir, "tiny.utf8", windows=4 * steps, length=128)
data = [{"input_ids": torch.tensor(w), "labels": torch.tensor(w)} for w in windows]


class Report(TrainerCallback):
    def on_optimizer_step(self, args, state, control, **kwargs):
        e = compression.events[-1]
        note = f", pass to {100 * e['pass']['target_sparsity']:.1f}%" if e["pass"] else ""
        print(f"step {e['step']:3d}: sparsity {100 * e['sparsity']:6.2f}%{note}")


compression = birdbone.BirdboneCallback(recipe)
args = TrainingArguments(output_dir=str(ROOT / "out" / "python-finetune"), max_steps=steps,
                         per_device_train_batch_size=4, learning_rate=5e-5, report_to=[],
                         save_strategy="no", logging_strategy="no", use_cpu=device == "cpu",
                         disable_tqdm=True)
Trainer(model=model, args=args, train_dataset=data, callbacks=[compression, Report()]).train()
