"""us3l-deploy: one universally slimmable self-supervised checkpoint -> any width -> ONNX /
TensorRT -> the width that fits a device's latency budget.

The Python API mirrors the command line (one code path: the CLI calls these functions)::

    import us3l_deploy as us3l
    run = us3l.train(epochs=2, out_dir="runs/demo")      # -> TrainResult
    acc = us3l.evaluate(run.checkpoint)                  # -> EvalResult
    model = us3l.load(run.checkpoint)                    # -> SlimmableModel (.widths/.calibrate/.slice/.export)
    rep = us3l.bench(run.checkpoint, budget_ms=2.0)      # -> BenchResult (.chosen)

The core underneath (slimmable layers, models, the width context, slicing, BN calibration,
checkpoints, profiling) is public too. Every name is re-exported lazily, so ``import
us3l_deploy`` (and ``us3l --help``) does not import torch.

Examples:
    >>> import torch
    >>> from us3l_deploy import get_model, use_width, slice_to_width
    >>> net = get_model("us_resnet_mini").eval()
    >>> with use_width(net, 0.5):
    ...     y = net(torch.zeros(1, 3, 16, 16))
    >>> static = slice_to_width(net, 0.5)   # plain nn.Conv2d/BatchNorm2d/Linear only
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names resolve lazily below
    from .api import (Artifact, BenchResult, Choice, CollapseScore, EvalResult, ExportResult, LatencyRow,
                      SlimmableModel, TrainConfig, TrainResult, WidthAccuracy, WidthInfo, bench, evaluate, export,
                      import_reference, load, train, widths)
    from .bn import bn_stats, calibrate_bn, load_bn_stats
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .context import model_width, use_width
    from .errors import US3LError
    from .models import get_model, list_models, register_model
    from .profile import profile_width
    from .slicing import channel_config, find_aliases, slice_to_width
    from .width import channels_at, format_width, make_divisible, parse_widths

_EXPORTS = {
    # the Python API (us3l_deploy.api): one function per CLI command, typed results
    "load": "api",
    "train": "api",
    "evaluate": "api",
    "widths": "api",
    "export": "api",
    "bench": "api",
    "import_reference": "api",
    "SlimmableModel": "api",
    "TrainResult": "api",
    "EvalResult": "api",
    "WidthAccuracy": "api",
    "WidthInfo": "api",
    "BenchResult": "api",
    "LatencyRow": "api",
    "Choice": "api",
    "CollapseScore": "api",
    "TrainConfig": "api",
    "ExportResult": "api",
    "Artifact": "api",
    # the core
    "US3LError": "errors",
    "channels_at": "width",
    "make_divisible": "width",
    "parse_widths": "width",
    "format_width": "width",
    "use_width": "context",
    "model_width": "context",
    "get_model": "models",
    "list_models": "models",
    "register_model": "models",
    "slice_to_width": "slicing",
    "channel_config": "slicing",
    "find_aliases": "slicing",
    "calibrate_bn": "bn",
    "bn_stats": "bn",
    "load_bn_stats": "bn",
    "Checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "profile_width": "profile",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'us3l_deploy' has no attribute {name!r}")
