"""`birdbone.BirdboneCallback` in transformers' Trainer: Wanda at schedule points, scored with
the training forwards' own activations, and the sparsity exact after every optimizer step."""

from __future__ import annotations

import pytest
import torch

import birdbone
from conftest import load_model

RECIPE = {
    "scorer": "wanda",
    "strategy": {"name": "layerwise", "params": {"scope": "row"}},
    "sparsity": 0.5,
    "training": {
        "schedule": {
            "kind": "gradual",
            "start_step": 1,
            "end_step": 3,
            "every": 1,
            "initial_sparsity": 0.25,
            "final_sparsity": 0.5,
            "curve": "linear",
        }
    },
}


def test_trainer_keeps_sparsity_exact(device, cal_windows, tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = load_model(device).train()
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    cb = birdbone.BirdboneCallback(RECIPE)
    seen = []

    class Check(TrainerCallback):
        """After every optimizer step (after Birdbone's hook): every pruned weight is zero and
        the count of zeros is the pass's."""

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            event = cb.events[-1]
            masks = cb.masks
            params = dict(model.named_parameters())
            pruned = total = 0
            for name, keep in masks.items():
                w = params[name].detach()
                assert not w[~keep].any(), f"step {event['step']}: '{name}' has a pruned weight that is not zero"
                pruned += int((~keep).sum())
                total += keep.numel()
            if masks:
                assert pruned / total == pytest.approx(event["sparsity"], abs=1e-12)
            seen.append((event["step"], event["sparsity"], event["pass"] is not None))

    ids = torch.tensor(cal_windows[:6])[:, :128]
    data = [{"input_ids": x, "labels": x.clone()} for x in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=5,
        learning_rate=1e-4,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb, Check()]).train()

    print("\n(step, sparsity, pass) per optimizer step:", seen)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5]
    # Passes at steps 1, 2, 3 (0.25 -> 0.5); the masks then hold through steps 4 and 5.
    assert [p for _, _, p in seen] == [True, True, True, False, False]
    assert seen[0][1] == pytest.approx(0.25, abs=1e-6)
    assert seen[-1][1] == pytest.approx(0.5, abs=1e-6)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
