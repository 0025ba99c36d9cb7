"""The core every room builds on: the channel rule, the width context, slimmable layers, the model
registry, slicing to plain networks, BN calibration, checkpoints, profiling, datasets, errors and
atomic files.

It imports torch and numpy only, never another room. Names are re-exported lazily, so
``import us3l.core`` alone does not import torch::

    from us3l.core import get_model, use_width, slice_to_width
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_getattr

from .version import __version__  # noqa: F401  (written in core/version.py, read by pyproject)

if TYPE_CHECKING:
    from .bn import bn_stats, calibrate_bn, load_bn_stats
    from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .context import model_width, use_width
    from .errors import US3LError
    from .models import get_model, list_models, register_model
    from .profile import profile_width
    from .slicing import channel_config, find_aliases, slice_to_width
    from .width import channels_at, format_width, make_divisible, parse_widths

EXPORTS = {
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

__all__ = list(EXPORTS)

__getattr__ = lazy_getattr(__name__, EXPORTS)
