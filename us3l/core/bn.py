"""BatchNorm re-calibration per width and the per-width BN statistics bank.

A universally slimmable network never stores BN statistics during SSL; before evaluation or
export at width ``w`` the running statistics are recomputed at that width: reset, then a
cumulative average over ``num_batches`` training batches in train mode without gradients.
Exporters and evaluation share :func:`calibrate_bn`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from .context import use_width
from .errors import CheckpointError, DataError
from .layers import USBatchNorm2d
from .width import DEFAULT_DIVISOR

_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
_PlainBN = nn.BatchNorm1d | nn.BatchNorm2d


@contextlib.contextmanager
def bn_calibration(model: nn.Module) -> Iterator[nn.Module]:
    """Put every BN layer in cumulative-averaging mode with reset statistics; restore modes on exit."""
    modes = [(m, m.training) for m in model.modules()]
    bns = [m for m in model.modules() if isinstance(m, _PLAIN_BN)]
    momenta = [(m, m.momentum) for m in bns]
    try:
        for m in bns:
            m.reset_running_stats()
            if isinstance(m, USBatchNorm2d):
                m.calibrating = True
            else:
                m.momentum = None  # PyTorch's cumulative moving average
        model.train()
        yield model
    finally:
        for m in bns:
            if isinstance(m, USBatchNorm2d):
                m.calibrating = False
        for bn, momentum in momenta:
            bn.momentum = momentum
        for module, training in modes:
            module.training = training


def calibrate_bn(
    model: nn.Module,
    batches: Iterable,
    width: float,
    num_batches: int | None = None,
    device: torch.device | str | None = None,
    divisor: int = DEFAULT_DIVISOR,
) -> nn.Module:
    """Recompute BN running statistics of ``model`` at ``width`` (cumulative average, reset first).

    Args:
        model: slimmable network (modified in place; train/eval modes are restored).
        batches: iterable of input tensors or ``(input, ...)`` tuples (training images).
        width: the width to calibrate.
        num_batches: stop after this many batches (None: the whole iterable).
        device: where to run (default: the model's device).
        divisor: channel divisor used at this width.

    Returns:
        ``model``, whose first ``c(w)`` entries of each BN buffer now hold this width's statistics.

    Raises:
        DataError: no batch was available.
    """
    from .heartbeat import stage
    from .width import format_width

    if device is None:
        device = next(model.parameters()).device
    seen = 0
    total = len(batches) if hasattr(batches, "__len__") else None  # type: ignore[arg-type]
    if num_batches is not None:
        total = min(total, num_batches) if total is not None else num_batches
    with use_width(model, width, divisor), bn_calibration(model), torch.no_grad(), \
            stage(f"BN recalibration w{format_width(width)}", total=total, unit="batches") as progress:
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device, non_blocking=True))
            seen += 1
            progress.update(seen)
    if seen == 0:
        raise DataError("BN calibration got no batches; give a non-empty calibration set")
    return model


def _bn_layers(model: nn.Module) -> Iterator[tuple[str, _PlainBN]]:
    for name, m in model.named_modules():
        if isinstance(m, _PLAIN_BN):
            yield name, m


def _running_stats(m: _PlainBN) -> tuple[torch.Tensor, torch.Tensor]:
    """The running mean and variance buffers of ``m`` (every BN our models build tracks them)."""
    assert m.running_mean is not None and m.running_var is not None, "a BN layer without running statistics"
    return m.running_mean, m.running_var


def bn_stats(model: nn.Module, width: float, divisor: int = DEFAULT_DIVISOR) -> dict[str, dict[str, torch.Tensor]]:
    """The calibrated statistics of every BN layer at ``width``: ``{name: {"mean", "var"}}`` (active entries)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    with use_width(model, width, divisor):
        for name, m in _bn_layers(model):
            c = m.active_channels()[1] if isinstance(m, USBatchNorm2d) else m.num_features
            running_mean, running_var = _running_stats(m)
            out[name] = {"mean": running_mean[:c].detach().cpu().clone(), "var": running_var[:c].detach().cpu().clone()}
    return out


def load_bn_stats(model: nn.Module, stats: dict[str, dict[str, torch.Tensor]], width: float,
                  divisor: int = DEFAULT_DIVISOR) -> nn.Module:
    """Write statistics from :func:`bn_stats` (or a checkpoint's bank) into ``model`` at ``width``.

    Raises:
        CheckpointError: a BN layer is missing from ``stats`` or has the wrong size.
    """
    layers = dict(_bn_layers(model))
    missing = sorted(set(layers) - set(stats))
    extra = sorted(set(stats) - set(layers))
    if missing or extra:
        raise CheckpointError(
            f"BN statistics do not match the model: missing {missing[:5]} unexpected {extra[:5]}"
        )
    with use_width(model, width, divisor), torch.no_grad():
        for name, m in layers.items():
            c = m.active_channels()[1] if isinstance(m, USBatchNorm2d) else m.num_features
            mean, var = stats[name]["mean"], stats[name]["var"]
            if mean.numel() != c or var.numel() != c:
                raise CheckpointError(f"BN statistics of {name} have {mean.numel()} entries, width {width} needs {c}")
            running_mean, running_var = _running_stats(m)
            running_mean[:c].copy_(mean)
            running_var[:c].copy_(var)
    return model
