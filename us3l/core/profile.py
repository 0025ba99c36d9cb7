"""MACs and parameters of any architecture at any width, counted on the static slice.

Counting on ``slice_to_width(model, w)`` (not on a separately defined narrow model) guarantees
the numbers describe exactly the network that is exported — the reference code profiled a
different model and got sub-width counts wrong (docs/method.md §15.9).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import torch
from torch import nn

from .slicing import slice_to_width
from .width import DEFAULT_DIVISOR


@dataclass(frozen=True)
class WidthProfile:
    """Cost of one width: channels per layer, multiply-accumulates and parameters."""

    width: float
    channels: dict[str, int] = field(default_factory=dict)
    macs: int = 0
    params: int = 0
    feature_dim: int = 0
    input_size: int = 0


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over conv and linear layers, per image.

    Parameter-free products (attention ``q @ k^T`` and ``attn @ v`` in the ViT) are not counted;
    for CNNs conv + linear layers are the whole cost.
    """
    total = 0

    def conv_hook(m: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        total += output.numel() // output.shape[0] * k

    def linear_hook(m: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += output.numel() // output.shape[0] * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return int(total)


def profile_width(model: nn.Module, width: float, divisor: int = DEFAULT_DIVISOR,
                  input_size: int | None = None) -> WidthProfile:
    """Profile ``model`` at ``width`` on its static slice.

    Args:
        model: a slimmable network (unchanged).
        width: the width.
        divisor: channel divisor (8, or 16/32 when snapping).
        input_size: square input resolution (default: the model's ``input_size``).

    Returns:
        A :class:`WidthProfile`; ``macs`` are per image.
    """
    static = slice_to_width(model, width, divisor)
    size = int(input_size) if input_size else int(getattr(model, "input_size", 32))
    example = torch.zeros(1, getattr(model, "in_chans", 3), size, size)
    macs = count_macs(static, example)
    with torch.no_grad():
        feat = static(example).shape[-1]
    params = sum(p.numel() for p in static.parameters())
    # slice_to_width sets these plain attributes; nn.Module's __getattr__ types every lookup as a tensor/module.
    sliced_width, channels = cast(float, static.width), cast("dict[str, int]", static.channels)
    return WidthProfile(width=sliced_width, channels=dict(channels), macs=macs, params=int(params),
                        feature_dim=int(feat), input_size=size)
