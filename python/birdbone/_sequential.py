"""Sequential calibration (the Wanda and SparseGPT papers' procedure) on a live transformers
decoder model: its blocks pruned one after another, each calibrated on the outputs of the blocks
before it as they were rewritten.

The first block's inputs (hidden states and every other argument: attention mask, position
embeddings, ...) are caught by a pre-hook that stops the forward there (the "Catcher" of the
papers' code). Then, per block: its Linears' statistics are recorded by forward hooks while it
runs on every caught batch, the native pass prunes it (GIL released), and it runs again to make
the next block's inputs. The native pass is one transaction: a failure in any block, or a
Python exception between blocks, restores every block it wrote.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _birdbone
from ._birdbone import BirdboneError
from ._calibrate import Calibrator, _batches, _forward, calibrate


def decoder_blocks(model: torch.nn.Module) -> Tuple[str, torch.nn.ModuleList]:
    """The decoder blocks and their name: ``model.model.layers`` (Llama, Mistral, Qwen, ...)
    or ``model.layers`` when there, else the longest ``ModuleList`` of blocks holding Linears
    that no other such list contains (so a block's list of experts is not taken for it)."""
    named = {id(m): n for n, m in model.named_modules()}
    for path in (("model", "layers"), ("layers",)):
        m = model
        for attr in path:
            m = getattr(m, attr, None)
        if isinstance(m, torch.nn.ModuleList) and len(m) > 0 and id(m) in named:
            return named[id(m)], m
    found = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.ModuleList)
        and len(m) > 0
        and all(any(isinstance(c, torch.nn.Linear) for c in b.modules()) for b in m)
    ]
    outer = [(n, m) for n, m in found if not any(o != n and n.startswith(o + ".") for o, _ in found)]
    if not outer:
        raise BirdboneError(
            f"{type(model).__name__} has no list of decoder blocks holding Linears "
            "(model.model.layers): sequential calibration needs one; use one-pass calibration"
        )
    return max(outer, key=lambda nm: len(nm[1]))


class _Caught(Exception):
    """Raised by the pre-hook on the first block: its inputs are caught, the forward stops."""


class _BlockInput:
    """One batch's inputs to a block: the hidden states, and the other arguments as the model
    passed them to the first block (attention mask, position embeddings, ...)."""

    __slots__ = ("x", "args", "kwargs", "key")

    def __init__(self, args: tuple, kwargs: dict):
        if args:
            self.x, self.args, self.key = args[0], args[1:], None
        else:
            # Hidden states passed by keyword: the first tensor argument.
            self.key = next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))
            self.x, self.args = kwargs[self.key], ()
        self.kwargs = {k: v for k, v in kwargs.items() if k != self.key}

    def run(self, block: torch.nn.Module) -> torch.Tensor:
        if self.key is None:
            out = block(self.x, *self.args, **self.kwargs)
        else:
            out = block(*self.args, **{self.key: self.x}, **self.kwargs)
        # transformers 5's decoder layers return the hidden states; older ones a tuple.
        return out[0] if isinstance(out, (tuple, list)) else out


def _catch_inputs(model: torch.nn.Module, first: torch.nn.Module, batches) -> List[_BlockInput]:
    caught: List[_BlockInput] = []

    def catch(module, args, kwargs):
        caught.append(_BlockInput(args, kwargs))
        raise _Caught

    handle = first.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            try:
                _forward(model, batch)
            except _Caught:
                continue
            raise BirdboneError("the model's forward did not reach its first decoder block")
    finally:
        handle.remove()
    return caught


def _on(params: Dict[str, torch.Tensor], entries: Dict[str, tuple]) -> Dict[str, tuple]:
    """Statistics as the native pass takes them: f32, contiguous, on each weight's device."""
    out = {}
    for name, (t, *rest) in entries.items():
        if name in params:
            t = t.detach().to(device=params[name].device, dtype=torch.float32)
            if not t.is_contiguous():
                t = t.contiguous()
        out[name] = (t, *(int(r) for r in rest))
    return out


def prune_sequential(
    model: torch.nn.Module,
    source: str,
    is_path: bool,
    params: Sequence[Tuple[str, torch.nn.Parameter]],
    data,
    needs: Dict[str, Any],
    *,
    batch_size: int,
    plugin_dirs: Optional[List[str]],
    keep_masks: bool,
    keep_undo: bool,
    progress: Optional[Callable[[int, int], None]],
):
    """The pass of ``birdbone.prune`` for a recipe that calibrates block by block: returns
    ``(report, masks, undo)``."""
    prefix, blocks = decoder_blocks(model)
    # transformers 5 lists each block's kind in config.layer_types; older blocks name their own.
    kinds = set(getattr(getattr(model, "config", None), "layer_types", None) or ())
    for b in blocks:
        kinds |= {k for a in ("attention_type", "layer_type") if isinstance(k := getattr(b, a, None), str)}
    if len(kinds) > 1:
        # Each block would need the mask the model makes for its kind; only the first block's
        # inputs are caught.
        raise BirdboneError(
            f"the decoder blocks mix attention types {sorted(map(str, kinds))} (sliding and full "
            "attention take different masks): sequential calibration from Python runs models whose "
            "blocks share one; use one-pass calibration"
        )
    linears = [
        [f"{prefix}.{i}.{n}.weight" for n, m in b.named_modules() if isinstance(m, torch.nn.Linear)]
        for i, b in enumerate(blocks)
    ]
    by_name = dict(params)
    device = params[0][1].device
    data = list(data)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            dense = None
            if needs["allocator"]:
                # The allocation is decided for the whole model before the first block is
                # pruned, on the dense model's statistics (as `birdbone prune` decides it).
                dense = _on(by_name, calibrate(model, data, batch_size=batch_size))
            seq = _birdbone.Sequential(
                list(params),
                source,
                is_path,
                [n for names in linears for n in names],
                stats=dense,
                plugin_dirs=plugin_dirs,
                keep_masks=keep_masks,
                keep_undo=keep_undo,
            )
            try:
                inputs = _catch_inputs(model, blocks[0], _batches(data, batch_size, device))
                for i, block in enumerate(blocks):
                    with Calibrator(block, hessians=needs["hessians"], prefix=f"{prefix}.{i}.") as cal:
                        outs = [inp.run(block) for inp in inputs]
                    got = cal.stats()
                    hessians = _on(by_name, got.hessians) if got.hessians is not None else None
                    pruned = seq.block(linears[i], _on(by_name, got), hessians)
                    del got, hessians
                    if pruned is not None:
                        # The block changed: the next one sees its outputs as rewritten.
                        del outs
                        outs = [inp.run(block) for inp in inputs]
                    for inp, out in zip(inputs, outs):
                        inp.x = out
                    del outs
                    if progress is not None:
                        progress(i + 1, len(blocks))
                report, masks, undo = seq.finish()
            except BaseException as failure:
                # Also for a Python exception between blocks: every block written goes back.
                try:
                    seq.abandon()
                except BirdboneError as restore:
                    raise restore from failure
                raise
    finally:
        model.train(was_training)
    return json.loads(report), dict(masks), undo
