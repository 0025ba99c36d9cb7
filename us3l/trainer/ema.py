"""The momentum (EMA) teacher: freezing, the update rule and momentum schedules.

docs/method.md §5.3: ``xi <- m * xi + (1 - m) * theta`` over the online network's parameters (no buffers),
once per iteration before the teacher forward; US3L uses a constant ``m = 0.99``, the ViT/MoCo-v3
variant a cosine schedule from 0.99 to 1 (docs/method.md §13). The teacher's parameters never require
gradients and are not given to the optimizer (the reference left them in, docs/method.md §15.5).
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def deactivate_requires_grad(module: M) -> M:
    """Turn off gradients for every parameter of ``module`` (the EMA teacher); returns it."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


@torch.no_grad()
def update_momentum(online: nn.Module, ema: nn.Module, m: float) -> None:
    """EMA update ``ema <- m * ema + (1 - m) * online`` over parameters only (not buffers).

    Args:
        online: the trained network (``encoder_q``).
        ema: its momentum copy (``encoder_k``), same parameter order and shapes.
        m: momentum in [0, 1]; 1 keeps the teacher fixed, 0 copies the online network.

    Raises:
        ValueError: ``m`` outside [0, 1] or mismatched parameter lists.
    """
    if not 0.0 <= m <= 1.0:
        raise ValueError(f"EMA momentum must lie in [0, 1], got {m}")
    src: list[torch.Tensor] = list(online.parameters())
    dst: list[torch.Tensor] = list(ema.parameters())
    if len(src) != len(dst):
        raise ValueError(f"online network has {len(src)} parameters, EMA copy has {len(dst)}")
    if not dst:
        return
    for a, b in zip(src, dst):
        if a.shape != b.shape:
            raise ValueError(f"parameter shape mismatch between online {tuple(a.shape)} and EMA {tuple(b.shape)}")
    torch._foreach_mul_(dst, m)
    torch._foreach_add_(dst, [p.detach() for p in src], alpha=1.0 - m)


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """Momentum rising from ``base`` (step 0) to ``final`` (last step) on a half cosine (MoCo v3, BYOL).

    ``m = final - (final - base) * (1 + cos(pi * step / total_steps)) / 2``; steps past the end give
    ``final``.
    """
    if total_steps <= 0:
        return float(final)
    t = min(max(step, 0), total_steps) / total_steps
    return float(final - (final - base) * (1.0 + math.cos(math.pi * t)) / 2.0)


def constant_momentum(step: int = 0, total_steps: int = 1, base: float = 0.99) -> float:
    """Constant momentum ``base`` (US3L's ``m = 0.99``, docs/method.md §5.3); same signature as :func:`cosine_momentum`."""
    del step, total_steps
    return float(base)
