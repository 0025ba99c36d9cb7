"""The one width context: ``with use_width(model, 0.35): out = model(x)``.

This is the only code that writes width state. It validates the width against the model's
range, sets it on every slimmable layer on entry, and restores each layer's previous width on
exit, whatever exception occurs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .layers import Slimmable
from .width import DEFAULT_DIVISOR, DEFAULT_WIDTH_RANGE, validate_width


def width_range_of(model: nn.Module) -> tuple[float, float]:
    """The ``(min, max)`` width of a model (its own ``width_range`` or that of a sub-module)."""
    for module in model.modules():
        rng = getattr(module, "width_range", None)
        if rng is not None:
            return float(rng[0]), float(rng[1])
    return DEFAULT_WIDTH_RANGE


@contextlib.contextmanager
def use_width(model: nn.Module, width: float, divisor: int = DEFAULT_DIVISOR,
              width_range: tuple[float, float] | None = None) -> Iterator[nn.Module]:
    """Run ``model`` at ``width`` inside the block; the previous width is restored on exit.

    Args:
        model: any module containing slimmable layers.
        width: the width multiplier; must lie in the model's ``width_range``.
        divisor: channel divisor (8 per the method; 16/32 to snap channels for hardware).
        width_range: override of the allowed range (default: the model's own).

    Raises:
        WidthError: the width is not a number or lies outside the range.

    Examples:
        >>> from us3l.core.models import get_model
        >>> import torch
        >>> net = get_model("us_resnet_mini").eval()
        >>> with use_width(net, 0.5):
        ...     y = net(torch.zeros(1, 3, 16, 16))
    """
    lo, hi = width_range if width_range is not None else width_range_of(model)
    w = validate_width(width, lo, hi)
    layers = [m for m in model.modules() if isinstance(m, Slimmable)]
    previous = [(m, m.__dict__.get("_width"), m.__dict__.get("_divisor")) for m in layers]
    try:
        for m in layers:
            m._width, m._divisor = w, int(divisor)
        yield model
    finally:
        for m, old_w, old_d in previous:
            for key, old in (("_width", old_w), ("_divisor", old_d)):
                if old is None:
                    m.__dict__.pop(key, None)
                else:
                    m.__dict__[key] = old


model_width = use_width  # the name used in the issue text


def current_width(model: nn.Module) -> float:
    """The width the model's slimmable layers currently run at (1.0 outside any context)."""
    for m in model.modules():
        if isinstance(m, Slimmable):
            return m._width
    return 1.0
