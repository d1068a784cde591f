"""`birdbone.prune`: one pass through the plugins over a live torch.nn.Module, in place."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from . import _birdbone
from ._birdbone import BirdboneError

RecipeLike = Union[str, "os.PathLike[str]", Mapping[str, Any]]
Stats = Mapping[str, Tuple[torch.Tensor, int]]


def _recipe_source(recipe: RecipeLike) -> Tuple[str, bool]:
    """(text or path, is_path): a mapping becomes JSON text (YAML's subset); a string that
    names a file is read as a recipe file (Birdbone's YAML/JSON or llm-compressor's); any
    other string is the recipe's YAML text."""
    if isinstance(recipe, Mapping):
        return json.dumps(dict(recipe)), False
    if isinstance(recipe, os.PathLike):
        return os.fspath(recipe), True
    if isinstance(recipe, str):
        if os.path.isfile(recipe):
            return recipe, True
        if "\n" not in recipe and ":" not in recipe and recipe.strip() not in ("{}", ""):
            raise BirdboneError(f"recipe file '{recipe}' does not exist")
        return recipe, False
    raise TypeError(f"a recipe is a file path, a dict or YAML text, not {type(recipe).__name__}")


def _plugin_dirs(plugin_dirs: Optional[Iterable[Union[str, "os.PathLike[str]"]]]) -> Optional[List[str]]:
    if plugin_dirs is None:
        return None
    if isinstance(plugin_dirs, (str, os.PathLike)):
        plugin_dirs = [plugin_dirs]
    return [os.fspath(d) for d in plugin_dirs]


def check_params(model: torch.nn.Module) -> List[Tuple[str, torch.nn.Parameter]]:
    """The module's parameters, by name, if Birdbone can prune them in place; otherwise a
    :class:`BirdboneError` saying why. Refused: parameters on the meta device (not
    materialised, or offloaded by accelerate), models offloaded to CPU or disk
    (``hf_device_map``), sharded parameters (DTensor) and other tensor subclasses, sparse or
    quantized layouts, and models spread over several devices."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"birdbone prunes a torch.nn.Module, not {type(model).__name__}")
    device_map = getattr(model, "hf_device_map", None)
    if isinstance(device_map, Mapping):
        where = {str(v) for v in device_map.values()}
        if "disk" in where or ("cpu" in where and len(where) > 1):
            raise BirdboneError(
                f"the model is offloaded (hf_device_map places modules on {sorted(where)}): "
                "Birdbone prunes weights in their own storage, so load the model whole onto one device"
            )
    params = list(model.named_parameters())
    devices = set()
    for name, p in params:
        if p.is_meta or p.device.type == "meta":
            raise BirdboneError(
                f"'{name}' is on the meta device (not materialised, or offloaded by accelerate): "
                "load the model whole onto one device (no device_map offloading) before pruning"
            )
        data = p.data
        if type(data).__name__ == "DTensor" or hasattr(data, "device_mesh"):
            raise BirdboneError(
                f"'{name}' is sharded (DTensor): Birdbone selects over whole tensors; gather the "
                "model onto one device (or prune before sharding it)"
            )
        if type(data) is not torch.Tensor:
            raise BirdboneError(
                f"'{name}' is a {type(data).__module__}.{type(data).__name__}, a tensor subclass "
                "(quantized or wrapped weights): Birdbone prunes plain dense tensors"
            )
        if p.layout != torch.strided:
            raise BirdboneError(f"'{name}' has layout {p.layout}: Birdbone prunes dense (strided) tensors")
        if p.device.type not in ("cpu", "cuda"):
            raise BirdboneError(f"'{name}' is on {p.device}: Birdbone runs on cpu and cuda")
        devices.add(p.device)
    if len(devices) > 1:
        raise BirdboneError(
            f"the model is spread over {sorted(str(d) for d in devices)}: a pass runs on one "
            "device; move the model onto one first"
        )
    return params


def _stats_for(params: Sequence[Tuple[str, torch.Tensor]], stats: Optional[Stats]):
    """Statistics as the native pass takes them: f32, on each weight's device."""
    if stats is None:
        return None
    from ._sequential import _on

    return _on(dict(params), stats)


@dataclass
class PruneResult:
    """What a pass did: the report (per parameter and in total, as ``birdbone prune --json``
    prints it) and the masks (name -> bool tensor of the weight's shape, True = kept)."""

    report: Dict[str, Any]
    masks: Dict[str, torch.Tensor] = field(repr=False)
    _undo: Any = field(default=None, repr=False, compare=False)

    @property
    def sparsity(self) -> float:
        return self.report["sparsity"]

    @property
    def pruned(self) -> int:
        return self.report["pruned"]

    @property
    def total(self) -> int:
        return self.report["total"]

    def undo(self) -> bool:
        """Takes the pass back (``prune(..., keep_undo=True)``): every weight it wrote is
        restored bit for bit, in the same tensors. False when it was already taken back. The
        ``masks`` stay as the pass made them."""
        if self._undo is None:
            raise BirdboneError("this pass was not kept for undo: prune(..., keep_undo=True)")
        return self._undo.undo()


def prune(
    model: torch.nn.Module,
    recipe: RecipeLike,
    *,
    stats: Optional[Stats] = None,
    calibration: Optional[Iterable] = None,
    plugin_dirs=None,
    keep_masks: bool = True,
    keep_undo: bool = False,
    progress: Optional[Callable[[int, Optional[int]], None]] = None,
) -> PruneResult:
    """Prunes ``model`` in place as ``recipe`` says (a file path, a dict, or YAML text; the
    fields of docs/recipes.md: scorer, strategy, sparsity, pattern, include/exclude,
    allocator, calibration mode and batch).

    Scorers that read activation statistics (wanda, ria) and strategies that read Hessians
    (sparsegpt) take ``stats`` (what :func:`birdbone.calibrate` records; ``hessians=True`` for
    SparseGPT), or ``calibration``: batches of token ids (windows, ``[b, len]`` tensors or
    dicts of model inputs) to run through the model first. A recipe whose calibration mode is
    ``sequential`` (the default for SparseGPT, as with ``birdbone prune``) takes
    ``calibration`` and prunes the decoder blocks one after another, each calibrated on the
    outputs of the blocks before it as they were rewritten. ``plugin_dirs``: folders of plugin
    ``.so`` files (default: the workspace's ``target/release``; ``BIRDBONE_PLUGIN_PATH`` adds
    more). ``keep_undo``: keep what the pass overwrites (in host memory) so
    :meth:`PruneResult.undo` can take it back. ``progress(done, total)``: after every block of
    a sequential pass, or every calibration batch (``total`` None).

    The pass plans with the model untouched, then writes every decision into the weights' own
    storage. A failure raises :class:`BirdboneError` (an exception of ``progress`` is raised
    as it is) and leaves the model as it was (a failed commit is rolled back bit for bit; a
    sequential pass restores every block it wrote). The GIL is released while the native pass
    runs.
    """
    source, is_path = _recipe_source(recipe)
    params = check_params(model)
    dirs = _plugin_dirs(plugin_dirs)
    needs = _birdbone.recipe_needs(source, is_path, dirs)
    batch_size = needs["batch"] or 4
    # Without a calibration section, SparseGPT calibrates block by block when the pass
    # calibrates (as `birdbone prune` does), and takes one-pass statistics when given them.
    if needs["sequential"] and (needs["explicit"] or stats is None):
        if calibration is None or stats is not None:
            raise BirdboneError(
                "the recipe calibrates block by block (sequential): pass calibration= batches, "
                "which the pass runs through one block at a time (not stats=, which are one-pass)"
            )
        from ._sequential import prune_sequential

        report, masks, undo = prune_sequential(
            model,
            source,
            is_path,
            params,
            calibration,
            needs,
            batch_size=batch_size,
            plugin_dirs=dirs,
            keep_masks=keep_masks,
            keep_undo=keep_undo,
            progress=progress,
        )
        return PruneResult(report=report, masks=masks, _undo=undo)
    if stats is None and calibration is not None:
        from ._calibrate import calibrate

        stats = calibrate(
            model,
            calibration,
            batch_size=batch_size,
            hessians=needs["hessians"],
            progress=None if progress is None else (lambda i: progress(i, None)),
        )
    hessians = getattr(stats, "hessians", None)
    with torch.no_grad():
        native_stats = _stats_for(params, stats)
        native_hessians = _stats_for(params, hessians)
    report, masks, undo = _birdbone.prune(
        [(n, p) for n, p in params],
        source,
        is_path,
        stats=native_stats,
        hessians=native_hessians,
        plugin_dirs=dirs,
        keep_masks=keep_masks,
        keep_undo=keep_undo,
    )
    return PruneResult(report=json.loads(report), masks=dict(masks), _undo=undo)


@dataclass
class Plugin:
    """A component a plugin offers."""

    name: str
    kind: str
    plugin: str
    version: str
    abi: str
    description: str
    path: str
    params: List[Tuple[str, str, str]]


@dataclass
class Plugins:
    """What the plugin folders hold: the usable components, and every file or component
    refused with the reason (another ABI major, a layout mismatch, a missing capability, a
    crash while loading, permissions, ...)."""

    components: List[Plugin]
    rejected: List[Tuple[str, str]]

    def __getitem__(self, name: str) -> Plugin:
        for c in self.components:
            if c.name == name:
                return c
        raise KeyError(name)


def plugins(plugin_dirs=None) -> Plugins:
    """Loads (once per process) and lists the plugins of ``plugin_dirs`` (default: the
    workspace's ``target/release``), with the reason for every refusal."""
    comps, rejected = _birdbone.plugins(_plugin_dirs(plugin_dirs))
    return Plugins(components=[Plugin(**c) for c in comps], rejected=list(rejected))
