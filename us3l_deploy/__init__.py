"""us3l-deploy core: universally slimmable layers, models, the width context, slicing, BN
calibration, checkpoints and profiling.

Public names are re-exported lazily so that ``import us3l_deploy`` (and ``us3l --help``) does
not import torch.

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
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
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
