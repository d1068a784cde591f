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
    model = load_model(device).train()
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    cb = birdbone.BirdboneCallback(RECIPE)
    seen = []

    def check(event, masks, params):
        """After every optimizer step (after Birdbone's hook): every pruned weight is zero and
        the count of zeros is the pass's."""
        pruned = total = 0
        for name, keep in masks.items():
            w = params[name].detach()
            assert not w[~keep].any(), f"step {event['step']}: '{name}' has a pruned weight that is not zero"
            pruned += int((~keep).sum())
            total += keep.numel()
        if masks:
            assert pruned / total == pytest.approx(event["sparsity"], abs=1e-12)
        seen.append((event["step"], event["sparsity"], event["pass"] is not None))

    _train(model, cb, cal_windows, device, tmp_path, 5, check, windows=6, length=128)

    print("\n(step, sparsity, pass) per optimizer step:", seen)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4, 5]
    # Passes at steps 1, 2, 3 (0.25 -> 0.5); the masks then hold through steps 4 and 5.
    assert [p for _, _, p in seen] == [True, True, True, False, False]
    assert seen[0][1] == pytest.approx(0.25, abs=1e-6)
    assert seen[-1][1] == pytest.approx(0.5, abs=1e-6)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs


def _train(model, cb, cal_windows, device, tmp_path, steps, check, windows=4, length=64):
    """`steps` Trainer steps on the first `windows` calibration windows cut to `length`, with
    Birdbone's callback `cb`; after each optimizer step (after cb's), `check(event, masks,
    params)`."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Check(TrainerCallback):
        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            check(cb.events[-1], cb.masks, dict(model.named_parameters()))

    ids = torch.tensor(cal_windows[:windows])[:, :length]
    data = [{"input_ids": x, "labels": x.clone()} for x in ids]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=steps,
        learning_rate=1e-4,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=device == "cpu",
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb, Check()]).train()


def _pruned(masks):
    return {n: int((~k).sum()) for n, k in masks.items()}


def test_layer_plates_rise_to_a_replayed_allocation_and_ossify(device, cal_windows, tmp_path):
    """Growth plates over layers from the Trainer, on an allocation file (what `birdbone prune
    --allocator birdbone` saves): even blocks 40%, odd blocks 60%. The odd (least load-bearing)
    matrices reach their count half-way through the schedule and ossify: their masks never change
    again, while the even ones go on rising to theirs. Exact counts after every step."""
    import json

    model = load_model(device).train()
    linears = [
        (n, p.numel())
        for n, p in model.named_parameters()
        if n.startswith("model.layers.") and n.endswith("proj.weight")
    ]
    params, total = [], 0
    for name, numel in linears:
        block = int(name.split(".")[2])
        asked = 0.4 if block % 2 == 0 else 0.6
        prune = round(0.4 * numel) if block % 2 == 0 else numel - round(0.4 * numel)
        params.append({"name": name, "numel": numel, "prune": prune, "asked": asked})
        total += numel
    alloc = tmp_path / "allocation.json"
    alloc.write_text(json.dumps({
        "allocator": "test", "settings": {}, "sparsity": 0.5, "total": total,
        "pruned": sum(p["prune"] for p in params), "params": params,
    }))
    final = {p["name"]: p["prune"] for p in params}
    recipe = {
        "scorer": "wanda",
        "strategy": {"name": "layerwise", "params": {"scope": "row"}},
        "sparsity": 0.5,
        "allocation": str(alloc),
        "training": {
            "schedule": {"kind": "gradual", "start_step": 1, "end_step": 5, "every": 1,
                         "initial_sparsity": 0.1, "final_sparsity": 0.5, "curve": "linear"},
            "layer_plates": {"earliest": 0.5},
        },
    }
    cb = birdbone.BirdboneCallback(recipe)
    seen, frozen = [], {}

    def check(event, masks, params):
        counts = _pruned(masks)
        for name, keep in masks.items():
            assert not params[name].detach()[~keep].any(), f"step {event['step']}: {name}"
            assert counts[name] <= final[name], f"step {event['step']}: {name} past its count"
            if name in frozen:
                assert torch.equal(keep, frozen[name]), f"step {event['step']}: ossified {name} changed"
            elif counts[name] == final[name] and event["pass"] is not None:
                frozen[name] = keep.clone()
        n = sum(k.numel() for k in masks.values())
        assert sum(counts.values()) / n == pytest.approx(event["sparsity"], abs=1e-12)
        seen.append((event["step"], sum(1 for k in frozen if int(k.split(".")[2]) % 2)))

    _train(model, cb, cal_windows, device, tmp_path, 6, check)
    print("\n(step, odd matrices ossified):", seen)
    assert _pruned(cb.masks) == final, "the last pass lands on the allocation"
    odd = sum(1 for n in final if int(n.split(".")[2]) % 2)
    ossified_at = next(s for s, k in seen if k == odd)
    assert ossified_at < 5, "the least load-bearing matrices ossify before the schedule's end"


def test_growth_plates_and_regrowth_keep_counts_exact(device, cal_windows, tmp_path):
    """Row growth plates and RigL regrowth from the Trainer: at every schedule point weights are
    swapped (regrown at zero, as many of the weakest pruned), and the count stays exact."""
    recipe = {
        "scorer": "magnitude",
        "strategy": "layerwise",  # per matrix: protected rows keep their weights, others prune more
        "sparsity": 0.5,
        "training": {
            "schedule": {"kind": "gradual", "start_step": 2, "end_step": 4, "every": 1,
                         "initial_sparsity": 0.3, "final_sparsity": 0.5, "curve": "linear"},
            "growth_plates": {"warmup_steps": 1},
            "regrow": {"fraction": 0.1},
        },
    }
    model = load_model(device).train()
    cb = birdbone.BirdboneCallback(recipe)
    events = []

    def check(event, masks, params):
        for name, keep in masks.items():
            assert not params[name].detach()[~keep].any(), f"step {event['step']}: {name}"
        if masks:
            n = sum(k.numel() for k in masks.values())
            assert sum(_pruned(masks).values()) / n == pytest.approx(event["sparsity"], abs=1e-12)
        events.append(event)

    _train(model, cb, cal_windows, device, tmp_path, 5, check)
    points = [e for e in events if e["pass"] is not None]
    print("\n(step, sparsity, regrown, protected rows):",
          [(e["step"], round(e["sparsity"], 6), e["regrown"], e["protected_rows"]) for e in events])
    assert [e["step"] for e in points] == [2, 3, 4]
    assert all(e["regrown"] > 0 for e in points), "regrowth swaps weights at every schedule point"
    assert events[-1]["sparsity"] == pytest.approx(0.5, abs=1e-6)
