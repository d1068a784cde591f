"""Shared fixtures of the Python front's tests: the real model (the folder the Rust tests use),
the CLI's own pass over it with the same recipe, and a few windows of real text.

Kept small for 2 CPU cores: calibration on 8 windows of 256 tokens, perplexity on 4."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

# Passive OpenMP workers, as scripts/env.sh sets them (for this process's libtorch and the CLI's):
# spinning ones make SparseGPT's many small operations several times slower on a busy 2-core
# machine. Read when libtorch starts its workers, so set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "target" / "release" / "birdbone"
RELEASE = ROOT / "target" / "release"

CAL = dict(text="c4.utf8", windows=8, length=256, batch=4)
EVAL = dict(text="wiki.utf8", windows=4, length=256)

# The recipe both sides run: Wanda 50%, compared within each output row.
WANDA = {
    "scorer": "wanda",
    "strategy": {"name": "layerwise", "params": {"scope": "row"}},
    "sparsity": 0.5,
    "calibration": {**CAL, "mode": "one-pass"},
}


def model_dir() -> Path:
    d = Path(os.environ.get("BIRDBONE_MODEL_DIR", ROOT / ".cache" / "smollm2-135m"))
    assert (d / "model.safetensors").exists(), (
        f"the real model is missing at {d}: run scripts/test.sh (it imports the GGUF)"
    )
    return d


DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def load_model(device: str):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32)
    return m.to(device).eval()


@pytest.fixture(scope="session")
def cal_windows():
    import birdbone

    return birdbone.calibration_windows(model_dir(), CAL["text"], CAL["windows"], CAL["length"])


@pytest.fixture(scope="session")
def eval_windows():
    import birdbone

    return birdbone.calibration_windows(model_dir(), EVAL["text"], EVAL["windows"], EVAL["length"])


def unpack_masks(path: Path) -> dict:
    """A masks.safetensors file (docs/design.md: bit i%8 of byte i/8, 1 = kept) as bool
    arrays of the weights' shapes."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="np") as f:
        meta = f.metadata()
        assert meta.get("format") == "birdbone-mask-v1"
        for name in f.keys():
            shape = json.loads(meta[f"shape:{name}"])
            packed = f.get_tensor(name)
            numel = int(np.prod(shape))
            bits = np.unpackbits(packed.view(np.uint8), bitorder="little")[:numel]
            out[name] = bits.reshape(shape).astype(bool)
    return out


# The same recipe calibrated block by block, and SparseGPT (which calibrates so by default).
SEQUENTIAL_WANDA = {**WANDA, "calibration": {**CAL, "mode": "sequential"}}
SPARSEGPT = {
    "strategy": {"name": "sparsegpt", "params": {"blocksize": 128, "percdamp": 0.01}},
    "sparsity": 0.5,
    "calibration": {**CAL, "mode": "sequential"},
}


def run_cli(tmp_path_factory, name: str, recipe: dict) -> Path:
    """`birdbone prune` (on the CPU) with ``recipe``: the folder it wrote."""
    assert CLI.exists(), f"{CLI} is missing: build with `cargo build --release --workspace`"
    d = tmp_path_factory.mktemp(name)
    path = d / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2))  # JSON is YAML
    out = d / "out"
    subprocess.run(
        [str(CLI), "prune", "--recipe", str(path), "--model", str(model_dir()), "--out", str(out),
         "--device", "cpu", "--quiet"],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return out


@pytest.fixture(scope="session")
def cli_run(tmp_path_factory):
    """`birdbone prune` with the WANDA recipe (one-pass calibration)."""
    return run_cli(tmp_path_factory, "cli", WANDA)


@pytest.fixture(scope="session")
def cli_sequential(tmp_path_factory):
    """`birdbone prune` with SEQUENTIAL_WANDA."""
    return run_cli(tmp_path_factory, "cli-sequential", SEQUENTIAL_WANDA)


@pytest.fixture(scope="session")
def cli_sparsegpt(tmp_path_factory):
    """`birdbone prune` with SPARSEGPT (sequential)."""
    return run_cli(tmp_path_factory, "cli-sparsegpt", SPARSEGPT)


def mask_agreement(masks: dict, want: dict, only: str = "") -> float:
    """The share of entries where ``masks`` (torch) and ``want`` (numpy) agree, over the
    weights whose name contains ``only``."""
    differ = total = 0
    for name, w in want.items():
        if only in name:
            differ += int(np.sum(masks[name].cpu().numpy() != w))
            total += w.size
    return 1 - differ / total


def perplexity(model, windows, batch: int = 4) -> float:
    """exp(mean NLL) over every predicted position of each window, as `birdbone eval` does."""
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            ids = torch.tensor(windows[i : i + batch], dtype=torch.long, device=device)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1))
            nll -= picked.double().sum().item()
            tokens += picked.numel()
    return float(np.exp(nll / tokens))
