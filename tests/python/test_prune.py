"""`birdbone.prune` on SmolLM2 loaded with transformers, against `birdbone prune` on the same
folder with the same recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import birdbone
from conftest import CAL, RELEASE, ROOT, WANDA, load_model, model_dir, perplexity, unpack_masks


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def pointers(model):
    return {n: p.data_ptr() for n, p in model.named_parameters()}


def cli_model(cli_run, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(cli_run, dtype=torch.float32).to(device).eval()


def test_wanda_matches_cli_bit_for_bit(device, cli_run, cal_windows, eval_windows):
    """With the CLI's own statistics (its Llama runtime on the folder, on the CPU as the CLI
    ran), the pass over the live transformers model gives the CLI's masks and weights exactly
    (on CUDA too: the engines agree bit for bit), in the tensors' own storage, and the same
    perplexity as the CLI's folder loaded by transformers."""
    model = load_model(device)
    before = pointers(model)
    stats = birdbone.calibrate_folder(model_dir(), cal_windows, batch_size=CAL["batch"])
    result = birdbone.prune(model, WANDA, stats=stats)
    assert pointers(model) == before, "a tensor moved: the pass must write in place"

    cli_masks = unpack_masks(cli_run / "masks.safetensors")
    assert set(result.masks) == set(cli_masks)
    assert len(cli_masks) == 30 * 7
    for name, want in cli_masks.items():
        got = result.masks[name].cpu().numpy()
        assert np.array_equal(got, want), f"{name}: masks differ in {np.sum(got != want)} entries"
    assert result.sparsity == pytest.approx(0.5, abs=1e-6)

    from safetensors.torch import load_file

    cli_weights = load_file(str(cli_run / "model.safetensors"))
    params = dict(model.named_parameters())
    for name in cli_masks:
        assert torch.equal(params[name].detach().cpu(), cli_weights[name]), name

    ours = perplexity(model, eval_windows)
    theirs = perplexity(cli_model(cli_run, device), eval_windows)
    print(f"\n{device}: perplexity after Wanda 50%: Python {ours:.4f}, CLI folder {theirs:.4f}")
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_wanda_with_transformers_hooks(device, cli_run, cal_windows, eval_windows):
    """With statistics from transformers' own forwards (birdbone.calibrate's hooks), the masks
    agree with the CLI's in at least 99.99% of entries and the perplexity is within 0.1%."""
    model = load_model(device)
    before = pointers(model)
    stats = birdbone.calibrate(model, cal_windows, batch_size=CAL["batch"])
    assert all(n in stats for n in unpack_masks(cli_run / "masks.safetensors"))
    sq, tokens = stats["model.layers.0.self_attn.q_proj.weight"]
    assert tokens == CAL["windows"] * CAL["length"] and sq.shape == (576,)
    result = birdbone.prune(model, WANDA, stats=stats)
    assert pointers(model) == before

    cli_masks = unpack_masks(cli_run / "masks.safetensors")
    differ = total = 0
    for name, want in cli_masks.items():
        got = result.masks[name].cpu().numpy()
        differ += int(np.sum(got != want))
        total += want.size
    agree = 1 - differ / total
    ours = perplexity(model, eval_windows)
    theirs = perplexity(cli_model(cli_run, device), eval_windows)
    print(
        f"\n{device}: masks agree in {100 * agree:.5f}% ({differ} of {total} differ); "
        f"perplexity Python {ours:.4f}, CLI {theirs:.4f}"
    )
    assert agree >= 0.9999
    assert abs(ours / theirs - 1) < 1e-3


def fixture_plugin(name: str) -> Path:
    p = ROOT / "target" / "fixtures" / "debug" / f"libbirdbone_fixture_plugin_{name}.so"
    if not p.exists():
        pytest.skip(f"{p} is not built (scripts/test.sh builds the fixture plugins)")
    return p


def test_bad_plugin_raises_and_model_is_unchanged(device, tmp_path):
    """A strategy that decides half the parameters and then panics: a BirdboneError, and
    every parameter exactly as before, in the same storage."""
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(fixture_plugin("panics"), bad)
    model = load_model(device)
    before, ptrs = snapshot(model), pointers(model)
    with pytest.raises(birdbone.BirdboneError, match="strategy bug"):
        birdbone.prune(
            model,
            {"scorer": "magnitude", "strategy": "panicking-strategy", "sparsity": 0.5},
            plugin_dirs=[RELEASE, bad],
        )
    with pytest.raises(birdbone.BirdboneError, match="scorer bug"):
        birdbone.prune(
            model,
            {"scorer": "panicking-scorer", "strategy": "layerwise", "sparsity": 0.5},
            plugin_dirs=[RELEASE, bad],
        )
    assert pointers(model) == ptrs
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


def test_errors_are_exceptions_and_leave_the_model(tmp_path):
    model = load_model("cpu")
    before = snapshot(model)
    with pytest.raises(birdbone.BirdboneError, match="no-such-scorer"):
        birdbone.prune(model, {"scorer": "no-such-scorer"})
    with pytest.raises(birdbone.BirdboneError, match="activation statistics"):
        birdbone.prune(model, {"scorer": "wanda", "strategy": "layerwise"})
    with pytest.raises(birdbone.BirdboneError, match="sparsity"):
        birdbone.prune(model, {"sparsity": 1.5})
    with pytest.raises(birdbone.BirdboneError, match="does not exist"):
        birdbone.prune(model, str(tmp_path / "missing.yaml"))
    # NaN in a weight: found while planning, before anything is written.
    with torch.no_grad():
        model.model.layers[3].mlp.up_proj.weight[7, 11] = float("nan")
    before["model.layers.3.mlp.up_proj.weight"][7, 11] = float("nan")
    with pytest.raises(birdbone.BirdboneError, match="up_proj"):
        birdbone.prune(model, {"scorer": "magnitude", "strategy": "global", "sparsity": 0.5})
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]) or (
            torch.isnan(p).any() and torch.equal(p.detach().nan_to_num(), before[n].nan_to_num())
        ), n


def test_unprunable_models_are_refused():
    """Meta (offloaded or not materialised) and sharded parameters, tensor subclasses and
    models over several devices are refused with a reason, before any plugin runs."""
    with torch.device("meta"):
        meta = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(birdbone.BirdboneError, match="meta device"):
        birdbone.prune(meta, {})

    class Wrapped(torch.Tensor):
        pass

    sub = torch.nn.Sequential(torch.nn.Linear(8, 8))
    sub[0].weight = torch.nn.Parameter(torch.randn(8, 8).as_subclass(Wrapped))
    with pytest.raises(birdbone.BirdboneError, match="subclass"):
        birdbone.prune(sub, {})

    offloaded = torch.nn.Sequential(torch.nn.Linear(8, 8))
    offloaded.hf_device_map = {"0": "cpu", "1": "disk"}
    with pytest.raises(birdbone.BirdboneError, match="offloaded"):
        birdbone.prune(offloaded, {})


def test_small_module_magnitude_in_place():
    """Any torch.nn.Module: a plain Linear stack, global magnitude 50%."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16))
    ptr = m[0].weight.data_ptr()
    r = birdbone.prune(m, {"scorer": "magnitude", "strategy": "global", "sparsity": 0.5})
    assert m[0].weight.data_ptr() == ptr
    zeros = sum(int((m[i].weight == 0).sum()) for i in (0, 2))
    assert zeros == r.pruned == round(0.5 * (64 * 32 + 32 * 16))
    assert torch.equal(r.masks["0.weight"], m[0].weight != 0)


def test_plugins_are_listed_with_rejection_reasons(tmp_path):
    listing = birdbone.plugins()
    names = {c.name for c in listing.components}
    assert {"magnitude", "wanda", "layerwise", "global", "nm", "sparsegpt"} <= names
    assert listing["wanda"].kind == "scorer"
    assert any(p[0] == "scope" for p in listing["layerwise"].params)
    bad = tmp_path / "plugins"
    bad.mkdir()
    shutil.copy(fixture_plugin("future_abi"), bad)
    (bad / "libnot_a_plugin.so").write_bytes(b"not an ELF file")
    listing = birdbone.plugins([bad])
    reasons = {Path(p).name: r for p, r in listing.rejected}
    assert "libnot_a_plugin.so" in reasons and "libbirdbone_fixture_plugin_future_abi.so" in reasons
    assert "major" in reasons["libbirdbone_fixture_plugin_future_abi.so"].lower()
    print("\n" + "\n".join(f"refused {k}: {v}" for k, v in reasons.items()))


def test_one_libtorch_in_the_process():
    """The native module reuses the libtorch that `import torch` loaded: every libtorch and
    libc10 library is mapped from one file, torch's own."""
    import os
    import re

    # libtorch's own libraries (libtorch_cpu.so, libc10_cuda.so, ...), not others whose names
    # start alike (torchaudio's libtorchaudio.so, which transformers may load, say).
    own = re.compile(r"^lib(torch|c10)(_[a-z_]+)?\.so")
    torch_lib = os.path.realpath(os.path.join(os.path.dirname(torch.__file__), "lib"))
    with open("/proc/self/maps") as f:
        libs = {
            line.split()[-1]
            for line in f
            if line.split()[-1].startswith("/") and own.match(os.path.basename(line.split()[-1]))
        }
    names = [os.path.basename(p) for p in libs]
    assert len(names) == len(set(names)), f"a library is mapped twice: {sorted(libs)}"
    assert all(os.path.dirname(os.path.realpath(p)) == torch_lib for p in libs), sorted(libs)
