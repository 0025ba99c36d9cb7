"""Collapse detector: per-width statistics of the online projections on a fixed held-out batch.

Two numbers per width, computed on ``z / ||z||`` (``z`` = online projector output, ``d`` dims):

- ``std``: the mean over dimensions of the per-dimension standard deviation across the batch.
  For well-spread unit vectors it is about ``1/sqrt(d)``; a collapsed representation (every image
  mapped to the same vector) gives ~0 (the criterion of BYOL/SimSiam). ``std_ratio = std*sqrt(d)``.
- ``eff_rank``: the effective rank ``exp(H(p))`` with ``p`` the normalised singular values of
  the centred batch (Roy & Vetterli 2007); 1 for a single direction, up to ``min(B, d)``.

A width counts as collapsed when ``std_ratio < threshold``. The measurement leaves the model
untouched: train-mode BN (as in training; running buffers are restored afterwards), no grad.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from us3l.core.context import use_width
from us3l.core.errors import US3LError
from us3l.core.width import format_width

log = logging.getLogger(__name__)


class CollapseError(US3LError):
    """Training stopped because the representation collapsed (``fail_on_collapse``)."""


@dataclass(frozen=True)
class CollapseStats:
    """Collapse statistics of one width."""

    width: float
    std: float
    std_ratio: float
    eff_rank: float
    collapsed: bool

    def to_dict(self) -> dict[str, float | bool]:
        return {"width": self.width, "std": self.std, "std_ratio": self.std_ratio, "eff_rank": self.eff_rank,
                "collapsed": self.collapsed}


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of the l2-normalised rows of ``z`` (B × d)."""
    zn = nn.functional.normalize(z.float(), dim=1)
    return float(zn.std(dim=0).mean())


def effective_rank(z: torch.Tensor, eps: float = 1e-12) -> float:
    """``exp`` of the entropy of the normalised singular values of the centred, l2-normalised ``z``."""
    zn = nn.functional.normalize(z.float(), dim=1)
    s = torch.linalg.svdvals(zn - zn.mean(dim=0, keepdim=True))
    if float(s.sum()) <= eps:
        return 1.0
    p = s / s.sum()
    return float(torch.exp(-(p * torch.log(p + eps)).sum()))


@torch.no_grad()
def measure_collapse(encoder: nn.Module, images: torch.Tensor, widths: list[float],
                     threshold: float = 0.1) -> list[CollapseStats]:
    """Collapse statistics of ``encoder`` (backbone + projector) at each width.

    Args:
        encoder: maps images to projections; slimmable (run under ``use_width``).
        images: a fixed, normalised held-out batch on the encoder's device.
        widths: widths to measure.
        threshold: ``std_ratio`` below which a width is reported as collapsed.
    """
    saved = {k: v.clone() for k, v in encoder.state_dict().items() if not v.dtype.is_floating_point or "running" in k}
    was_training = encoder.training
    encoder.train()  # batch statistics, as in training (BN running stats are not meaningful during SSL)
    out = []
    try:
        for w in widths:
            with use_width(encoder, w):
                z = encoder(images)
            std = embedding_std(z)
            ratio = std * math.sqrt(z.shape[1])
            out.append(CollapseStats(float(w), std, ratio, effective_rank(z), bool(ratio < threshold)))
    finally:
        encoder.load_state_dict(saved, strict=False)
        encoder.train(was_training)
    return out


def report_collapse(stats: list[CollapseStats], epoch: int, fail: bool) -> list[float]:
    """Log the statistics, warn on collapse, raise :class:`CollapseError` when ``fail``.

    Returns:
        The collapsed widths (empty when healthy).
    """
    collapsed = [s.width for s in stats if s.collapsed]
    log.info("epoch %d collapse check: %s", epoch, ", ".join(
        f"w={format_width(s.width)} std*sqrt(d)={s.std_ratio:.3f} eff_rank={s.eff_rank:.1f}" for s in stats))
    if collapsed:
        text = ", ".join(format_width(w) for w in collapsed)
        msg = (f"representation collapsed at width(s) {text} after epoch {epoch} "
               f"(std of normalised projections * sqrt(d) below threshold)")
        if fail:
            raise CollapseError(msg + "; stopped by --fail-on-collapse")
        log.warning("%s", msg)
    return collapsed
