"""Slice a universally slimmable network into a plain network at one width.

``slice_to_width(model, w)`` deep-copies the model, replaces every slimmable layer by the
standard layer its ``to_static()`` returns at width ``w`` and hands back the copy in ``eval()``:
only ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` / activations / pooling remain, with the
real channel counts, so exporters see no masks and no Slice ops.
"""

from __future__ import annotations

import copy

from torch import nn

from .context import use_width
from .layers import Slimmable, USBatchNorm2d
from .width import DEFAULT_DIVISOR, round_width

STANDARD_LEAVES = (
    nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.Linear, nn.ReLU, nn.ReLU6, nn.GELU, nn.LayerNorm,
    nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity, nn.Flatten, nn.Dropout,
)


def channel_config(model: nn.Module, width: float, divisor: int = DEFAULT_DIVISOR) -> dict[str, int]:
    """Active output channels of every slimmable conv/linear layer at ``width`` (name -> count).

    Two widths with equal ``channel_config`` slice to identical networks (width aliases).
    """
    with use_width(model, width, divisor):
        return {
            name: m.active_channels()[1]
            for name, m in model.named_modules()
            if isinstance(m, Slimmable) and not isinstance(m, USBatchNorm2d)
        }


def slice_to_width(model: nn.Module, width: float, divisor: int = DEFAULT_DIVISOR) -> nn.Module:
    """Return a plain copy of ``model`` at ``width`` whose output equals ``model`` under ``use_width``.

    BN running statistics are copied as they are: calibrate (``calibrate_bn``) or load
    calibrated statistics for this width first.

    Args:
        model: a slimmable network (left unchanged).
        width: width in the model's range.
        divisor: channel divisor (8 per the method; 16/32 snaps channels for hardware).

    Returns:
        The static network in ``eval()`` mode, with attributes ``width``, ``divisor`` and ``channels``.

    Examples:
        >>> import torch
        >>> from us3l.core.models import get_model
        >>> net = get_model("us_resnet_mini").eval()
        >>> static = slice_to_width(net, 0.5)
        >>> static.conv1.out_channels
        16
    """
    channels = channel_config(model, width, divisor)
    with use_width(model, width, divisor):
        # Pre-seeding deepcopy's memo swaps each slimmable layer for its plain equivalent during
        # the copy, so the full-size tensors of those layers are never duplicated.
        memo = {id(m): m.to_static() for m in model.modules() if isinstance(m, Slimmable)}
        static = copy.deepcopy(model, memo)
    static.eval()
    # Plain (non-tensor) attributes: nn.Module types its __setattr__ for tensors and modules only,
    # and stores any other value in the instance dict, as this does.
    static.__dict__.update(width=round_width(width), divisor=int(divisor), channels=channels)
    for p in static.parameters():
        p.requires_grad_(False)
    return static


def is_static(module: nn.Module) -> bool:
    """True when ``module`` contains no slimmable layer."""
    return not any(isinstance(m, Slimmable) for m in module.modules())


def find_aliases(model: nn.Module, widths: list[float], divisor: int = DEFAULT_DIVISOR) -> dict[float, float]:
    """Map each width to the first width (in the given order) that slices to the identical network.

    Two widths are aliases when every slimmable layer has the same active (input, output)
    channels — inputs count too, since some layers (the ViT's linears) slim only their input.
    Widths that map to themselves are distinct networks.
    """
    seen: dict[tuple, float] = {}
    out: dict[float, float] = {}
    for w in widths:
        with use_width(model, w, divisor):
            key = tuple((name, m.active_channels()) for name, m in model.named_modules() if isinstance(m, Slimmable))
        out[round_width(w)] = seen.setdefault(key, round_width(w))
    return out


def stage_channels(channels: dict[str, int]) -> list[int]:
    """Output channels of the last slimmable layer of each top-level stage (stem, layer1, ...)."""
    stages: dict[str, int] = {}
    for name, c in channels.items():
        parts = name.split(".")
        top = ".".join(parts[:2]) if parts[0] == "features" else parts[0]
        if "downsample" in parts:
            continue
        stages[top] = c
    return list(stages.values())
