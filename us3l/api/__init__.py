"""The Python API: the toolkit as a library, one call per ``us3l`` command.

::

    import us3l

    run = us3l.train(epochs=2, out_dir="runs/demo")          # TrainResult
    acc = us3l.evaluate(run.checkpoint, "0.25,0.5,1.0")      # EvalResult (accuracy.json written)
    model = us3l.load(run.checkpoint)                        # SlimmableModel
    plain = model.calibrate(0.35).slice(0.35)                # a plain nn.Module at width 0.35
    files = model.export("0.25:1.0:0.25", out="onnx")        # ExportResult, parity-checked ONNX
    rep = us3l.bench(run.checkpoint, device="cpu", budget_ms=2.0)   # BenchResult
    rep.chosen.width

The CLI calls these same functions and renders their typed results, so the command line and
Python never disagree. Names are resolved lazily: importing this package does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .results import (BenchResult, Choice, CollapseScore, EvalResult, LatencyRow, TrainResult, WidthAccuracy,
                      WidthInfo)

if TYPE_CHECKING:
    from .commands import bench, evaluate, export, finetune, pack, predict, train, widths
    from .model import import_reference, load
    from .tasks import FinetuneResult, PackResult, Prediction, PredictResult
    from .fleet import DeviceCheck, FleetCheckResult, FleetDevicePlan, FleetPlanResult, fleet_check, fleet_plan
    from .model import SlimmableModel
    from us3l.exporters import Artifact, ExportResult
    from us3l.trainer.config import TrainConfig

_LAZY = {
    "SlimmableModel": "us3l.api.model",
    "load": "us3l.api.model",
    "train": "us3l.api.commands",
    "evaluate": "us3l.api.commands",
    "widths": "us3l.api.commands",
    "export": "us3l.api.commands",
    "bench": "us3l.api.commands",
    "import_reference": "us3l.api.model",
    "finetune": "us3l.api.commands",
    "predict": "us3l.api.commands",
    "pack": "us3l.api.commands",
    "FinetuneResult": "us3l.api.tasks",
    "PredictResult": "us3l.api.tasks",
    "Prediction": "us3l.api.tasks",
    "PackResult": "us3l.api.tasks",
    "TrainConfig": "us3l.trainer.config",
    "ExportResult": "us3l.exporters",
    "Artifact": "us3l.exporters",
    "fleet_plan": "us3l.api.fleet",
    "fleet_check": "us3l.api.fleet",
    "FleetPlanResult": "us3l.api.fleet",
    "FleetDevicePlan": "us3l.api.fleet",
    "FleetCheckResult": "us3l.api.fleet",
    "DeviceCheck": "us3l.api.fleet",
}

__all__ = [
    "Artifact", "BenchResult", "Choice", "ExportResult", "TrainConfig", "CollapseScore", "EvalResult", "LatencyRow", "SlimmableModel", "TrainResult",
    "WidthAccuracy", "WidthInfo", "bench", "evaluate", "export", "import_reference", "load", "train", "widths",
    "FinetuneResult", "PackResult", "PredictResult", "Prediction", "finetune", "pack", "predict",
    "fleet_plan", "fleet_check", "FleetPlanResult", "FleetDevicePlan", "FleetCheckResult", "DeviceCheck",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'us3l.api' has no attribute {name!r}")
