"""Birdbone's Python front: the same pruning plugins on live PyTorch and transformers models.

    import birdbone
    stats = birdbone.calibrate(model, batches)          # Wanda's statistics, by forward hooks
    result = birdbone.prune(model, "examples/recipes/wanda-50.yaml", stats=stats)
    # A recipe with `calibration: {mode: sequential}` (SparseGPT's default) prunes block by
    # block, each block calibrated on the rewritten ones before it:
    result = birdbone.prune(model, "examples/recipes/sparsegpt-2of4.yaml", calibration=batches)

The model is pruned in place: every parameter keeps its storage (``data_ptr()``), so anything
holding the model (an optimizer, a server, a compiled graph) sees the pruned weights at once. A
pass plans first with the model untouched and then commits; any failure raises
:class:`BirdboneError` and leaves the model exactly as it was.

``torch`` is imported before the native module, which links the very libtorch that torch
loaded (torch 2.11, the series tch 0.24 is built against): one libtorch in the process.
"""

from __future__ import annotations

import torch  # first: the native module reuses the libtorch this loads

_series = torch.__version__.split("+")[0].split(".")[:2]
if _series != ["2", "11"]:
    raise ImportError(
        f"birdbone's native module is built against torch 2.11 (libtorch's C++ ABI changes "
        f"between series); this Python has torch {torch.__version__}: install torch==2.11.*"
    )

from . import _birdbone  # noqa: E402
from ._birdbone import BirdboneError, DEFAULT_PLUGIN_DIR  # noqa: E402,F401
from ._calibrate import Calibrator, Stats, calibrate, calibrate_folder, calibration_windows  # noqa: E402,F401
from ._prune import (  # noqa: E402,F401
    PruneResult,
    Plugin,
    Plugins,
    check_params,
    plugins,
    prune,
)

__all__ = [
    "BirdboneError",
    "Calibrator",
    "PruneResult",
    "Plugin",
    "Stats",
    "Plugins",
    "BirdboneCallback",
    "calibrate",
    "calibrate_folder",
    "calibration_windows",
    "plugins",
    "prune",
]


def __getattr__(name):
    # transformers is optional: the callback is imported on first use.
    if name == "BirdboneCallback":
        from ._callback import BirdboneCallback

        return BirdboneCallback
    raise AttributeError(f"module 'birdbone' has no attribute '{name}'")
