"""Activation statistics of a live model, through forward hooks: per Linear weight, the sum of
x² per input column and the tokens summed (Wanda, RIA), and on demand ``XᵀX`` of each distinct
input (SparseGPT) — what `birdbone prune` records (models/llama's StatsRecorder), here from the
model's own forwards."""

from __future__ import annotations

import os
import weakref
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from . import _birdbone
from ._birdbone import BirdboneError


class Stats(dict):
    """Activation statistics: per Linear weight name, ``(Σ_tokens x_j² per input column, tokens)``
    (f32, on the activations' device). ``hessians``, when recorded (``hessians=True``): per
    weight name ``(XᵀX, tokens, group)``, f32 ``[in, in]``, one matrix shared by the Linears that
    read the same input (q/k/v, gate/up), ``group`` numbering those sets in recording order."""

    hessians: Optional[Dict[str, Tuple[torch.Tensor, int, int]]] = None


def _version(x: torch.Tensor) -> Optional[int]:
    """The tensor's version counter (bumped by every in-place write); inference tensors have
    none."""
    try:
        return x._version
    except RuntimeError:
        return None


class _Input:
    """An input seen during the current forwards: the tensor (by weak reference, so it is not
    kept alive, and its id cannot be mistaken for a later tensor's), its version counter (an
    in-place write makes it another input), the first Linear that read it and its Σ x²."""

    __slots__ = ("ref", "version", "leader", "sq", "tokens")

    def __init__(self, x: torch.Tensor, leader: str, sq: torch.Tensor, tokens: int):
        self.ref = weakref.ref(x)
        self.version = _version(x)
        self.leader = leader
        self.sq = sq
        self.tokens = tokens


class Calibrator:
    """Records, while active, the squared inputs of every ``torch.nn.Linear`` of ``model``
    (or those whose weight name passes ``only``): per weight name, f32 ``Σ_tokens x_j²`` on
    the activations' device and the number of tokens. With ``hessians=True`` it also sums
    ``XᵀX`` (f32, on the activations' device) once per distinct input: Linears that read the
    same tensor in a forward (q/k/v, gate/up) share one matrix, as `birdbone prune`'s recorder
    does. Nothing else of the activations is kept. Use as a context manager around forwards::

        with birdbone.Calibrator(model) as cal:
            model(input_ids=ids)
        stats = cal.stats()

    ``prefix`` is put before every weight name (a block's Calibrator names its weights as the
    whole model does).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        only: Optional[Callable[[str], bool]] = None,
        *,
        hessians: bool = False,
        prefix: str = "",
    ):
        self.model = model
        self.only = only
        self.hessians = hessians
        self.prefix = prefix
        self._handles = []
        self._clear()

    def _clear(self) -> None:
        self._sums: Dict[str, List] = {}
        # Hessians by the first Linear of each input group (its leader), in recording order.
        self._grams: Dict[str, List] = {}
        self._members: Dict[str, List[str]] = {}
        self._leader_of: Dict[str, str] = {}
        self._seen: List[_Input] = []

    def _shared(self, x: torch.Tensor) -> Optional[_Input]:
        """The entry of ``x`` if a Linear read this very tensor (alive, unchanged) before."""
        found, live = None, []
        for entry in self._seen:
            obj = entry.ref()
            if obj is None:
                continue
            live.append(entry)
            if obj is x and entry.version == _version(x):
                found = entry
        self._seen = live
        return found

    def _record(self, name: str, x: torch.Tensor) -> None:
        entry = self._shared(x)
        if entry is None:
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
            entry = _Input(x, name, flat.square().sum(dim=0), flat.shape[0])
            self._seen.append(entry)
            if self.hessians:
                gram = self._grams.get(name)
                if gram is None:
                    cols = flat.shape[1]
                    gram = [torch.zeros(cols, cols, dtype=torch.float32, device=flat.device), 0]
                    self._grams[name] = gram
                    self._members[name] = []
                gram[0].addmm_(flat.T, flat)
                gram[1] += flat.shape[0]
        if self.hessians:
            leader = self._leader_of.setdefault(name, entry.leader)
            if leader != entry.leader:
                raise BirdboneError(
                    f"'{name}' read the input of '{leader}' in one forward and of "
                    f"'{entry.leader}' in another: Hessians are summed per shared input"
                )
            if name not in self._members[leader]:
                self._members[leader].append(name)
        acc = self._sums.get(name)
        if acc is None:
            self._sums[name] = [entry.sq.clone(), entry.tokens]
        else:
            acc[0].add_(entry.sq)
            acc[1] += entry.tokens

    def _hook(self, name: str):
        def record(module, args):
            x = args[0] if args else None
            if isinstance(x, torch.Tensor):
                with torch.no_grad():
                    self._record(name, x)

        return record

    def start(self) -> "Calibrator":
        if self._handles:
            return self
        for mname, module in self.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                name = self.prefix + (f"{mname}.weight" if mname else "weight")
                if self.only is None or self.only(name):
                    self._handles.append(module.register_forward_pre_hook(self._hook(name)))
        return self

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._seen = []

    def __enter__(self) -> "Calibrator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stats(self) -> Stats:
        """What was recorded: name -> (Σ x² per input column, tokens), and ``.hessians``
        when recorded."""
        out = Stats((n, (v[0], int(v[1]))) for n, v in self._sums.items())
        if self.hessians:
            out.hessians = {}
            for group, (leader, (gram, tokens)) in enumerate(self._grams.items()):
                for n in self._members[leader]:
                    out.hessians[n] = (gram, int(tokens), group)
        return out

    def take(self) -> Stats:
        """The statistics recorded so far, cleared for what follows."""
        out = self.stats()
        self._clear()
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
    hessians: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> Stats:
    """One-pass calibration: runs ``data`` (token-id windows, ``[b, len]`` tensors or dicts
    of model inputs) through ``model`` in eval mode without gradients, recording every
    Linear's statistics with the model as it is. Returns name -> (Σ x², tokens), ready for
    :func:`birdbone.prune`'s ``stats``; with ``hessians=True`` also ``.hessians`` (``XᵀX`` per
    distinct Linear input, what SparseGPT needs: one f32 ``[in, in]`` matrix per input, so
    mind the memory on large models, or prune sequentially)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with Calibrator(model, only, hessians=hessians) as cal, torch.no_grad():
            for i, batch in enumerate(_batches(data, batch_size, device)):
                _forward(model, batch)
                if progress is not None:
                    progress(i + 1)
        return cal.stats()
    finally:
        model.train(was_training)


def _forward(model: torch.nn.Module, batch: dict):
    return model(**batch, use_cache=False) if _takes_use_cache(model) else model(**batch)


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
