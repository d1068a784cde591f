"""`birdbone.BirdboneCallback`: compression during transformers' Trainer fine-tuning, by
birdbone_tch::train::Compression over the live module's parameters."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import torch
from transformers import TrainerCallback

from . import _birdbone
from ._calibrate import Calibrator
from ._prune import _plugin_dirs, _recipe_source, _stats_for, check_params


class BirdboneCallback(TrainerCallback):
    """Prunes on the schedule of ``recipe``'s ``training`` section (one-shot or gradual;
    growth plates, regrowth) and holds the masks after every optimizer step, so the sparsity
    is exact after each one::

        trainer = Trainer(model=model, args=args, train_dataset=ds,
                          callbacks=[birdbone.BirdboneCallback("examples/recipes/gradual-magnitude-50.json")])

    Around each optimizer step: before it, pruned weights lose their gradient (and stateful
    scorers observe); after it, the masks are re-applied and, at schedule points, a pass runs
    through the plugins. Scorers that read activations (wanda) get the statistics of the
    training forwards since the previous pass, recorded by forward hooks. ``events`` keeps
    what each step did (step, pass report, sparsity).
    """

    def __init__(self, recipe, plugin_dirs=None, keep_undo: int = 0):
        source, is_path = _recipe_source(recipe)
        self._comp = _birdbone.Compressor(source, is_path, plugin_dirs=_plugin_dirs(plugin_dirs))
        if keep_undo:
            self._comp.keep_undo(keep_undo)
        self._model: Optional[torch.nn.Module] = None
        self._params: List = []
        self._calibrator: Optional[Calibrator] = None
        self.events: List[Dict[str, Any]] = []

    # The parameters are looked up once, at the start of training: they are the model's own
    # tensors, written in place, so the same objects serve every step.
    def _attach(self, model: torch.nn.Module) -> None:
        if self._model is model:
            return
        self._model = model
        self._params = check_params(model)
        self._sync_hooks()

    def _sync_hooks(self) -> None:
        wants = self._comp.wants_activations()
        if wants and self._calibrator is None:
            self._calibrator = Calibrator(self._model).start()
        elif not wants and self._calibrator is not None:
            self._calibrator.stop()
            self._calibrator = None

    @property
    def masks(self) -> Dict[str, torch.Tensor]:
        """The masks in force (name -> bool tensor, True = kept)."""
        return dict(self._comp.masks())

    @property
    def step(self) -> int:
        return self._comp.step()

    def prune_now(self, model: torch.nn.Module, sparsity: float, stats=None) -> Dict[str, Any]:
        """Prunes now, outside the schedule (one-shot before fine-tuning, with calibration
        statistics for Wanda); the masks then hold through every later step."""
        self._attach(model)
        with torch.no_grad():
            native = _stats_for(self._params, stats)
        return json.loads(self._comp.prune_now(self._params, sparsity, native))

    def undo_last_pass(self) -> bool:
        """Takes the newest kept pass back (``keep_undo``): weights, masks and counts."""
        return self._comp.undo_last_pass()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._attach(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._attach(model)
        if self._calibrator is not None:
            got = self._calibrator.take()
            if got:
                with torch.no_grad():
                    self._comp.observe_activations(_stats_for(self._params, got))
        self._comp.after_backward(self._params)

    def on_optimizer_step(self, args, state, control, **kwargs):
        event = json.loads(self._comp.after_step(self._params))
        self.events.append(event)
        self._sync_hooks()

    def on_train_end(self, args, state, control, **kwargs):
        if self._calibrator is not None:
            self._calibrator.stop()
            self._calibrator = None
