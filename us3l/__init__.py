"""us3l-deploy: one universally slimmable self-supervised checkpoint -> any width -> ONNX /
TensorRT -> the width that fits a device's latency budget.

The Python API mirrors the command line (one code path: the CLI calls these functions)::

    import us3l
    run = us3l.train(epochs=2, out_dir="runs/demo")      # -> TrainResult
    acc = us3l.evaluate(run.checkpoint)                  # -> EvalResult
    model = us3l.load(run.checkpoint)                    # -> SlimmableModel (.widths/.calibrate/.slice/.export)
    rep = us3l.bench(run.checkpoint, budget_ms=2.0)      # -> BenchResult (.chosen)

The core underneath (slimmable layers, models, the width context, slicing, BN calibration,
checkpoints, profiling) is public too. Every name is re-exported lazily, so ``import
us3l`` (and ``us3l --help``) does not import torch.

Examples:
    >>> import torch
    >>> from us3l import get_model, use_width, slice_to_width
    >>> net = get_model("us_resnet_mini").eval()
    >>> with use_width(net, 0.5):
    ...     y = net(torch.zeros(1, 3, 16, 16))
    >>> static = slice_to_width(net, 0.5)   # plain nn.Conv2d/BatchNorm2d/Linear only
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from .core import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names resolve lazily below
    from .api import (Artifact, BenchResult, Choice, CollapseScore, EvalResult, ExportResult, LatencyRow,
                      SlimmableModel, TrainConfig, TrainResult, WidthAccuracy, WidthInfo, bench, evaluate, export,
                      import_reference, load, train, widths)
    from .api import FinetuneResult, PackResult, PredictResult, finetune, pack, predict
    from .core import (Checkpoint, US3LError, bn_stats, calibrate_bn, channel_config, channels_at, find_aliases,
                       format_width, get_model, list_models, load_bn_stats, load_checkpoint, make_divisible,
                       model_width, parse_widths, profile_width, register_model, save_checkpoint, slice_to_width,
                       use_width)

#: The Python API (us3l.api): one call per CLI command, and the typed results.
_API = ("load", "evaluate", "widths", "import_reference", "SlimmableModel", "TrainResult", "EvalResult",
        "WidthAccuracy", "WidthInfo", "BenchResult", "LatencyRow", "Choice", "CollapseScore", "TrainConfig",
        "ExportResult", "Artifact", "finetune", "predict", "pack", "FinetuneResult", "PredictResult", "PackResult")
#: Rooms whose name is also a command: ``us3l.train``, ``us3l.export`` and ``us3l.bench`` are the
#: room packages, and calling one runs the API call of the same name (``us3l.export(ckpt, "0.5")``).
_ROOM_CALLS = ("train", "export", "bench")
_CORE = ("US3LError", "channels_at", "make_divisible", "parse_widths", "format_width", "use_width", "model_width",
         "get_model", "list_models", "register_model", "slice_to_width", "channel_config", "find_aliases",
         "calibrate_bn", "bn_stats", "load_bn_stats", "Checkpoint", "save_checkpoint", "load_checkpoint",
         "profile_width")

__all__ = ["__version__", *_API, *_ROOM_CALLS, *_CORE]


class _RoomCall(types.ModuleType):
    """A room package that is also its command's API call: ``us3l.export(...)`` is
    ``us3l.api.export(...)``, while ``us3l.export.pipeline`` stays the room's module."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        api = importlib.import_module("us3l.api")
        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    # The import system binds each imported subpackage as an attribute of its parent; the rooms
    # that share a command's name are made callable at that moment, however they were imported.
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _ROOM_CALLS and type(value) is types.ModuleType:
            value.__class__ = _RoomCall
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _ROOM_CALLS:
        return importlib.import_module(f".{name}", __name__)
    if name in _API:
        return getattr(importlib.import_module(".api", __name__), name)
    if name in _CORE:
        return getattr(importlib.import_module(".core", __name__), name)
    raise AttributeError(f"module 'us3l' has no attribute {name!r}")
