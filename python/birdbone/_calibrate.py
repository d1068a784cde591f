"""Activation statistics of a live model, through forward hooks: per Linear weight, the sum of
x² per input column and the tokens summed — what `birdbone prune` records for Wanda and RIA
(models/llama's StatsRecorder), here from the model's own forwards."""

from __future__ import annotations

import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from . import _birdbone

Stats = Dict[str, Tuple[torch.Tensor, int]]


class Calibrator:
    """Records, while active, the squared inputs of every ``torch.nn.Linear`` of ``model``
    (or those whose weight name passes ``only``): per weight name, f32 ``Σ_tokens x_j²`` on
    the activations' device and the number of tokens. Nothing else of the activations is
    kept. Use as a context manager around forwards::

        with birdbone.Calibrator(model) as cal:
            model(input_ids=ids)
        stats = cal.stats()
    """

    def __init__(self, model: torch.nn.Module, only: Optional[Callable[[str], bool]] = None):
        self.model = model
        self.only = only
        self._sums: Dict[str, List] = {}
        self._handles = []

    def _hook(self, name: str):
        def record(module, args):
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor):
                return
            with torch.no_grad():
                flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
                sq = flat.square().sum(dim=0)
                entry = self._sums.get(name)
                if entry is None:
                    self._sums[name] = [sq, flat.shape[0]]
                else:
                    entry[0].add_(sq)
                    entry[1] += flat.shape[0]

        return record

    def start(self) -> "Calibrator":
        if self._handles:
            return self
        for mname, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                name = f"{mname}.weight" if mname else "weight"
                if self.only is None or self.only(name):
                    self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "Calibrator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> Stats:
        """What was recorded: name -> (Σ x² per input column, tokens)."""
        return {n: (v[0], int(v[1])) for n, v in self._sums.items()}

    def take(self) -> Stats:
        """The statistics recorded so far, cleared for what follows."""
        out = self.stats()
        self._sums = {}
        return out


def _batches(data, batch_size: int, device: torch.device):
    """Token-id batches on ``device``: tensors ``[b, len]`` (or ``[len]``), dicts of model
    inputs, or windows (lists of token ids) grouped ``batch_size`` at a time."""
    pending: List[Sequence[int]] = []
    for item in data:
        if isinstance(item, dict):
            yield {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
        elif isinstance(item, torch.Tensor):
            t = item if item.dim() == 2 else item.unsqueeze(0)
            yield {"input_ids": t.to(device)}
        else:
            pending.append(item)
            if len(pending) == batch_size:
                yield {"input_ids": torch.tensor(pending, dtype=torch.long, device=device)}
                pending = []
    if pending:
        yield {"input_ids": torch.tensor(pending, dtype=torch.long, device=device)}


def calibrate(
    model: torch.nn.Module,
    data: Iterable,
    *,
    batch_size: int = 4,
    only: Optional[Callable[[str], bool]] = None,
    progress: Optional[Callable[[int], None]] = None,
) -> Stats:
    """One-pass calibration: runs ``data`` (token-id windows, ``[b, len]`` tensors or dicts
    of model inputs) through ``model`` in eval mode without gradients, recording every
    Linear's statistics with the model as it is. Returns name -> (Σ x², tokens), ready for
    :func:`birdbone.prune`'s ``stats``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with Calibrator(model, only) as cal, torch.no_grad():
            for i, batch in enumerate(_batches(data, batch_size, device)):
                model(**batch, use_cache=False) if _takes_use_cache(model) else model(**batch)
                if progress is not None:
                    progress(i + 1)
        return cal.stats()
    finally:
        model.train(was_training)


def _takes_use_cache(model: torch.nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "use_cache")


def calibration_windows(
    model_dir: Union[str, "os.PathLike[str]"],
    text: str = "c4.utf8",
    windows: int = 32,
    length: int = 512,
) -> List[List[int]]:
    """The windows `birdbone prune` calibrates on: the first ``windows`` windows of
    ``length`` tokens of ``text`` (a file, or c4.utf8 / wiki.utf8 / tiny.utf8 from the
    checkout's .cache), tokenized by ``model_dir``'s tokenizer.json exactly as the CLI does."""
    return _birdbone.token_windows(os.fspath(model_dir), text, length, windows)


def calibrate_folder(
    model_dir: Union[str, "os.PathLike[str]"],
    windows: List[List[int]],
    *,
    batch_size: int = 4,
    device: str = "cpu",
) -> Stats:
    """The statistics `birdbone prune` computes, by its own Llama runtime on the model folder
    (f32): bit for bit the CLI's, for comparisons. The live model is not involved."""
    return dict(_birdbone.calibrate_folder(os.fspath(model_dir), windows, batch_size, device))
