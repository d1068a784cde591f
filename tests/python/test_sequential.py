"""Sequential calibration from Python (blocks pruned one after another, each calibrated on the
rewritten ones before it), Hessians through hooks (SparseGPT), undo, the transaction over the
whole pass, and the GIL released while native code runs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import birdbone
from conftest import (
    CAL,
    SEQUENTIAL_WANDA,
    SPARSEGPT,
    WANDA,
    load_model,
    mask_agreement,
    model_dir,
    perplexity,
    unpack_masks,
)
from test_prune import cli_model, pointers, snapshot

BLOCKS = 30
TICK = 0.002


def assert_bitwise(model, before, ptrs, what):
    assert pointers(model) == ptrs, f"{what}: a tensor moved"
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), f"{what}: '{n}' differs"


def test_sequential_wanda_against_cli(device, cli_sequential, cli_run, cal_windows, eval_windows):
    """Wanda 50% per row, calibrated block by block on transformers' forwards, against `birdbone
    prune` with the same sequential recipe (its own Llama runtime: the last bits differ, and
    each block feeds the differences on). Block 0 sees the dense model's inputs in both
    procedures; later blocks see the pruned ones, so their masks leave the one-pass masks.
    Then undo takes the whole pass back."""
    model = load_model(device)
    before, ptrs = snapshot(model), pointers(model)
    seen = []
    result = birdbone.prune(
        model,
        SEQUENTIAL_WANDA,
        calibration=cal_windows,
        keep_undo=True,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(i, BLOCKS) for i in range(1, BLOCKS + 1)]
    assert pointers(model) == ptrs, "a tensor moved: the pass must write in place"

    cli_masks = unpack_masks(cli_sequential / "masks.safetensors")
    assert set(result.masks) == set(cli_masks) and len(cli_masks) == BLOCKS * 7
    params = dict(model.named_parameters())
    for name, keep in result.masks.items():
        w = params[name].detach()
        assert bool(((~keep).sum(dim=1) == round(0.5 * keep.shape[1])).all()), f"{name}: not 50% per row"
        assert not w[~keep].any(), f"{name}: a pruned weight is not zero"
        assert torch.equal(w[keep], before[name][keep]), f"{name}: a kept weight changed"
    assert result.sparsity == pytest.approx(0.5, abs=1e-6)

    one_pass = unpack_masks(cli_run / "masks.safetensors")
    agree = mask_agreement(result.masks, cli_masks)
    first = mask_agreement(result.masks, cli_masks, "model.layers.0.")
    last = mask_agreement(result.masks, cli_masks, f"model.layers.{BLOCKS - 1}.")
    first_one_pass = mask_agreement(result.masks, one_pass, "model.layers.0.")
    vs_one_pass = mask_agreement(result.masks, one_pass)
    ours = perplexity(model, eval_windows)
    theirs = perplexity(cli_model(cli_sequential, device), eval_windows)
    print(
        f"\n{device}: sequential Wanda 50%: masks agree with the CLI's in {100 * agree:.4f}% "
        f"(block 0 {100 * first:.4f}%, block {BLOCKS - 1} {100 * last:.4f}%), with one-pass "
        f"masks in {100 * vs_one_pass:.3f}%; perplexity Python {ours:.4f}, CLI {theirs:.4f}"
    )
    assert first >= 0.9999 and first_one_pass >= 0.9999, "block 0 is calibrated on the dense model"
    # Later blocks inherit every earlier block's last-bit differences, so the bounds depend on
    # the machine's numerics: measured 99.93% / -0.19% (this checkout's 2-core CPU), 99.75% /
    # -0.74% (the GPU machine's CPU) and 99.83% / +0.21% (an H100), docs/python.md.
    assert agree >= 0.995
    assert vs_one_pass <= 0.99, "the sequential masks should leave the one-pass ones"
    assert abs(ours / theirs - 1) < 0.015

    assert result.undo() is True
    assert_bitwise(model, before, ptrs, "after undo")
    assert result.undo() is False


def test_sequential_sparsegpt_against_cli(device, cli_sparsegpt, cal_windows, eval_windows):
    """SparseGPT 50%, sequential, with Hessians recorded by hooks (q/k/v and gate/up sharing
    one): exactly half of every matrix pruned and the kept weights rewritten, as the CLI's
    sequential run does. SparseGPT's reconstruction feeds every rounding difference on to the
    next blocks (the CLI against itself with another batch size agrees in ~94% of entries and
    differs by ~1% in perplexity), so block 0 is compared tightly and the whole model loosely."""
    model = load_model(device)
    before, ptrs = snapshot(model), pointers(model)
    result = birdbone.prune(model, SPARSEGPT, calibration=cal_windows, keep_undo=True)
    assert pointers(model) == ptrs

    cli_masks = unpack_masks(cli_sparsegpt / "masks.safetensors")
    assert set(result.masks) == set(cli_masks) and len(cli_masks) == BLOCKS * 7
    params = dict(model.named_parameters())
    rewritten = 0
    for name, keep in result.masks.items():
        w = params[name].detach()
        assert int((~keep).sum()) == round(0.5 * keep.numel()), name
        assert not w[~keep].any(), f"{name}: a pruned weight is not zero"
        rewritten += not torch.equal(w[keep], before[name][keep])
    assert rewritten == len(cli_masks), "SparseGPT rewrites the weights it keeps"
    assert {p["decision"] for p in result.report["params"]} == {"new values"}

    agree = mask_agreement(result.masks, cli_masks)
    first = mask_agreement(result.masks, cli_masks, "model.layers.0.")
    ours = perplexity(model, eval_windows)
    theirs = perplexity(cli_model(cli_sparsegpt, device), eval_windows)
    print(
        f"\n{device}: sequential SparseGPT 50%: masks agree with the CLI's in {100 * agree:.3f}% "
        f"(block 0 {100 * first:.4f}%); perplexity Python {ours:.4f}, CLI {theirs:.4f}"
    )
    assert first >= 0.999
    assert agree >= 0.9
    assert abs(ours / theirs - 1) < 0.05

    assert result.undo() is True
    assert_bitwise(model, before, ptrs, "after undo")


def test_failure_in_a_sequential_pass_restores_every_block(device, cal_windows):
    """A pass that fails at block 3 — by a Python exception (here from the progress callback)
    or by the native pass (a NaN in block 3's weights, found while planning it) — has written
    blocks 0..2 and puts them all back: every parameter bit for bit, in the same storage."""
    windows = cal_windows[:2]
    model = load_model(device).train()
    before, ptrs = snapshot(model), pointers(model)
    written = []

    q0 = "model.layers.0.self_attn.q_proj.weight"

    def progress(done, total):
        written.append(not torch.equal(model.get_parameter(q0), before[q0]))
        if done == 3:
            raise KeyboardInterrupt("stop at block 3")

    with pytest.raises(KeyboardInterrupt, match="block 3"):
        birdbone.prune(model, SEQUENTIAL_WANDA, calibration=windows, progress=progress)
    assert written == [True, True, True], "blocks were written before the failure"
    assert_bitwise(model, before, ptrs, "after an exception between blocks")
    assert model.training, "the model's mode is restored"

    bad = "model.layers.3.mlp.down_proj.weight"
    with torch.no_grad():
        dict(model.named_parameters())[bad][7, 11] = float("nan")
    before[bad][7, 11] = float("nan")
    seen = []
    with pytest.raises(birdbone.BirdboneError, match="not finite"):
        birdbone.prune(model, SPARSEGPT, calibration=windows, progress=lambda d, n: seen.append(d))
    assert seen == [1, 2, 3], "blocks 0..2 were written before block 3 failed"
    assert pointers(model) == ptrs
    for n, p in model.named_parameters():
        assert torch.equal(p.detach().nan_to_num(), before[n].nan_to_num()), n


def test_hessians_through_hooks_share_one_matrix_per_input():
    """``calibrate(..., hessians=True)``: XᵀX per distinct input, found by the input tensor
    itself, so q/k/v share one matrix and gate/up another; its diagonal is Σ x²."""
    model = load_model("cpu")
    windows = birdbone.calibration_windows(model_dir(), CAL["text"], 2, 64)
    stats = birdbone.calibrate(model, windows, hessians=True)
    h = stats.hessians
    assert set(h) == set(stats) and len(h) == BLOCKS * 7 + 1  # and lm_head
    layer = "model.layers.5."
    q, k, v, o = (h[f"{layer}self_attn.{n}_proj.weight"] for n in "qkvo")
    gate, up, down = (h[f"{layer}mlp.{n}_proj.weight"] for n in ("gate", "up", "down"))
    assert q[0] is k[0] is v[0] and gate[0] is up[0]
    assert q[2] == k[2] == v[2] and gate[2] == up[2]
    assert len({q[2], o[2], gate[2], down[2]}) == 4
    assert len({g for _, _, g in h.values()}) == BLOCKS * 4 + 1
    for name in (layer + "self_attn.q_proj.weight", layer + "mlp.down_proj.weight"):
        gram, tokens, _ = h[name]
        sq, n = stats[name]
        assert tokens == n == 2 * 64
        assert torch.equal(gram, gram.T)
        torch.testing.assert_close(gram.diagonal(), sq, rtol=1e-5, atol=1e-6)


def test_gil_is_released_while_native_code_runs(monkeypatch, cal_windows):
    """While the native pass runs (one-pass, and each block of a sequential one), another
    Python thread keeps running."""
    from birdbone import _birdbone

    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(TICK)

    spans = []

    def timed(f):
        def call(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return f(*args, **kwargs)
            finally:
                spans.append((t0, time.perf_counter()))

        return call

    class Sequential:
        """The native pass, with each block timed."""

        def __init__(self, *args, **kwargs):
            self._pass = real_sequential(*args, **kwargs)
            self.block = timed(self._pass.block)
            self.finish = self._pass.finish
            self.abandon = self._pass.abandon

    real_sequential = _birdbone.Sequential
    monkeypatch.setattr(_birdbone, "prune", timed(_birdbone.prune))
    monkeypatch.setattr(_birdbone, "Sequential", Sequential)

    model = load_model("cpu")
    stats = birdbone.calibrate(model, cal_windows[:2])
    # One libtorch thread: the ticker has a core of its own (2 cores on CI) and libtorch's
    # workers do not wait on a busy one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    thread = threading.Thread(target=ticker, daemon=True)
    thread.start()
    try:
        birdbone.prune(model, {**WANDA, "include": ["re:model\\.layers\\.[0-7]\\."]}, stats=stats)
        one_pass = spans[-1]
        birdbone.prune(load_model("cpu"), SEQUENTIAL_WANDA, calibration=cal_windows[:2])
    finally:
        stop.set()
        thread.join()
        torch.set_num_threads(threads)
    blocks = spans[1:]
    assert len(blocks) == BLOCKS

    def ticks_in(spans):
        return sum(1 for t in ticks if any(a <= t <= b for a, b in spans))

    for what, s in (("one-pass prune", [one_pass]), ("sequential blocks", blocks)):
        native = sum(b - a for a, b in s)
        during = ticks_in(s)
        print(f"\n{what}: {native:.2f} s in native code, {during} ticks of the other thread meanwhile")
        assert native > 0.1, f"{what}: too short to tell"
        # A tick every TICK seconds while the thread gets the GIL; none while native code held it.
        assert during >= 0.25 * native / TICK, what


def test_sequential_refusals(cal_windows):
    model = load_model("cpu")
    before, ptrs = snapshot(model), pointers(model)
    with pytest.raises(birdbone.BirdboneError, match="calibration= batches"):
        birdbone.prune(model, SEQUENTIAL_WANDA, stats=birdbone.calibrate(model, cal_windows[:1]))
    with pytest.raises(birdbone.BirdboneError, match="'global' strategy"):
        birdbone.prune(model, {**SEQUENTIAL_WANDA, "strategy": "global"}, calibration=cal_windows[:1])
    with pytest.raises(birdbone.BirdboneError, match="outside them"):
        birdbone.prune(model, {**SEQUENTIAL_WANDA, "include": ["*"]}, calibration=cal_windows[:1])
    with pytest.raises(birdbone.BirdboneError, match="Hessians"):
        one_pass = {**SPARSEGPT, "calibration": {**CAL, "mode": "one-pass"}}
        birdbone.prune(model, one_pass, stats=birdbone.calibrate(model, cal_windows[:1]))
    assert_bitwise(model, before, ptrs, "after the refusals")

    # One-pass undo, and its refusal when the pass was not kept.
    magnitude = {"scorer": "magnitude", "strategy": "layerwise", "sparsity": 0.5}
    result = birdbone.prune(model, magnitude, keep_undo=True)
    assert result.pruned == round(0.5 * result.total)
    assert result.undo() is True
    assert_bitwise(model, before, ptrs, "after a one-pass undo")
    tiny = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(birdbone.BirdboneError, match="not kept for undo"):
        birdbone.prune(tiny, {"scorer": "magnitude", "sparsity": 0.5}).undo()
