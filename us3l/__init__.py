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

from typing import TYPE_CHECKING

from .core import __version__
from .core.lazy import lazy_getattr

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names resolve lazily below
    from .api import (Artifact, BenchResult, Choice, CollapseScore, EvalResult, ExportResult, LatencyRow,
                      SlimmableModel, TrainConfig, TrainResult, WidthAccuracy, WidthInfo, bench, evaluate, export,
                      import_reference, load, train, widths)
    from .api import FinetuneResult, PackResult, PredictResult, finetune, pack, predict
    from .api import FleetCheckResult, FleetPlanResult, fleet_check, fleet_plan
    from .core import (Checkpoint, US3LError, bn_stats, calibrate_bn, channel_config, channels_at, find_aliases,
                       format_width, get_model, list_models, load_bn_stats, load_checkpoint, make_divisible,
                       model_width, parse_widths, profile_width, register_model, save_checkpoint, slice_to_width,
                       use_width)

#: The Python API (us3l.api): one plain function per CLI command, and the typed results.
#: ``us3l.train``, ``us3l.export`` and ``us3l.bench`` are these functions; the rooms that do the
#: work are the packages ``us3l.trainer``, ``us3l.exporters`` and ``us3l.benchmarks``.
_API = ("train", "export", "bench", "load", "evaluate", "widths", "import_reference", "finetune", "predict", "pack",
        "SlimmableModel", "TrainResult", "EvalResult", "WidthAccuracy", "WidthInfo", "BenchResult", "LatencyRow",
        "Choice", "CollapseScore", "TrainConfig", "ExportResult", "Artifact", "FinetuneResult", "PredictResult",
        "PackResult", "fleet_plan", "fleet_check", "FleetPlanResult", "FleetCheckResult")
_CORE = ("US3LError", "channels_at", "make_divisible", "parse_widths", "format_width", "use_width", "model_width",
         "get_model", "list_models", "register_model", "slice_to_width", "channel_config", "find_aliases",
         "calibrate_bn", "bn_stats", "load_bn_stats", "Checkpoint", "save_checkpoint", "load_checkpoint",
         "profile_width")

__all__ = ["__version__", *_API, *_CORE]

__getattr__ = lazy_getattr(__name__, {**{name: "api" for name in _API}, **{name: "core" for name in _CORE}})


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
