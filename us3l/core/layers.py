"""Universally slimmable layers (first-k channel slicing) that turn themselves into plain layers.

Each layer owns one full-size parameter set. At forward time it reads the width that
:func:`us3l.core.context.use_width` set (the only writer of width state), computes its active
channel counts with :func:`us3l.core.width.channels_at`, and slices the first ``k`` channels
into locals; module attributes (``in_channels``, ``groups``...) are never mutated.
``to_static()`` returns the equivalent ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` at the
current width, with copied (not shared) tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .width import DEFAULT_DIVISOR, channels_at


class Slimmable:
    """Mixin holding the width state of one layer (written only by ``use_width``)."""

    _width: float = 1.0
    _divisor: int = DEFAULT_DIVISOR

    def _active(self, full: int, slim: bool, ratio: int = 1) -> int:
        return channels_at(full, self._width, ratio, self._divisor) if slim else full

    def active_channels(self) -> tuple[int, int]:  # pragma: no cover - abstract
        """(active input channels, active output channels) at the current width."""
        raise NotImplementedError

    def to_static(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError


def _pair(size: tuple[int, ...]) -> tuple[int, int]:
    """A 2-D conv's size attribute (torch types it ``tuple[int, ...]``; it always holds two entries)."""
    return size[0], size[1]


class USConv2d(nn.Conv2d, Slimmable):
    """Slimmable ``nn.Conv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as ``nn.Conv2d`` (full size).
        slim_in / slim_out: whether the input / output side follows the width (the RGB stem input
            and un-slimmed heads are ``False``).
        ratio: ``(r_in, r_out)`` for the ratio form ``r * make_divisible(C*w/r)`` (MobileNetV2).
        depthwise: groups equal the active channel count.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
        slim_in: bool = True,
        slim_out: bool = True,
        ratio: tuple[int, int] = (1, 1),
        depthwise: bool = False,
    ) -> None:
        groups = in_channels if depthwise else 1
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.slim_in, self.slim_out, self.ratio, self.depthwise = slim_in, slim_out, tuple(ratio), depthwise

    def active_channels(self) -> tuple[int, int]:
        """(active input channels, active output channels) at the current width."""
        return (
            self._active(self.in_channels, self.slim_in, self.ratio[0]),
            self._active(self.out_channels, self.slim_out, self.ratio[1]),
        )

    def _sliced(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        cin, cout = self.active_channels()
        if self.depthwise:
            return self.weight[:cout], (self.bias[:cout] if self.bias is not None else None), cin
        weight = self.weight[:cout, :cin]
        return weight, (self.bias[:cout] if self.bias is not None else None), 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, groups = self._sliced()
        if x.shape[1] != (weight.shape[1] * groups):
            raise RuntimeError(
                f"USConv2d expected {weight.shape[1] * groups} input channels at width {self._width}, got {x.shape[1]}"
            )
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)

    def to_static(self) -> nn.Conv2d:
        weight, bias, groups = self._sliced()
        cin = weight.shape[1] * groups
        padding = self.padding if isinstance(self.padding, str) else _pair(self.padding)
        conv = nn.Conv2d(cin, weight.shape[0], _pair(self.kernel_size), _pair(self.stride), padding,
                         _pair(self.dilation), groups=groups, bias=bias is not None)
        with torch.no_grad():
            conv.weight.copy_(weight)
            if bias is not None:
                assert conv.bias is not None  # built with bias=True just above
                conv.bias.copy_(bias)
        return conv


class USLinear(nn.Linear, Slimmable):
    """Slimmable ``nn.Linear`` (``slim_in`` / ``slim_out`` select the slimmed sides)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 slim_in: bool = True, slim_out: bool = False) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.slim_in, self.slim_out = slim_in, slim_out

    def active_channels(self) -> tuple[int, int]:
        return self._active(self.in_features, self.slim_in), self._active(self.out_features, self.slim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fin, fout = self.active_channels()
        if x.shape[-1] != fin:
            raise RuntimeError(f"USLinear expected {fin} input features at width {self._width}, got {x.shape[-1]}")
        return F.linear(x, self.weight[:fout, :fin], self.bias[:fout] if self.bias is not None else None)

    def to_static(self) -> nn.Linear:
        fin, fout = self.active_channels()
        lin = nn.Linear(fin, fout, bias=self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight[:fout, :fin])
            if self.bias is not None:
                assert lin.bias is not None  # built with bias=True just above
                lin.bias.copy_(self.bias[:fout])
        return lin


class USBatchNorm2d(nn.BatchNorm2d, Slimmable):
    """Slimmable BatchNorm2d with shared affine parameters (first-c slicing).

    Training mode normalises with the current batch's statistics and does **not** touch the
    running buffers (as the method's ``track_running_stats=False`` during SSL), unless BN
    calibration is active (:func:`us3l.core.bn.calibrate_bn`), which accumulates a cumulative
    average into the first ``c`` entries. Eval mode uses ``running_mean[:c]``/``running_var[:c]``,
    which are only meaningful after calibration at this width (or loading calibrated statistics).
    """

    # Always built with ``track_running_stats=True``, so the buffers torch types as optional exist.
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, ratio: int = 1, slim: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=True, track_running_stats=True)
        self.ratio, self.slim = ratio, slim
        self.calibrating = False  # toggled only by us3l.core.bn.bn_calibration

    def active_channels(self) -> tuple[int, int]:
        c = self._active(self.num_features, self.slim, self.ratio)
        return c, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.active_channels()[1]
        if x.shape[1] != c:
            raise RuntimeError(f"USBatchNorm2d expected {c} channels at width {self._width}, got {x.shape[1]}")
        weight, bias = self.weight[:c], self.bias[:c]
        if self.training and not self.calibrating:
            return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)
        if self.training:  # calibration: cumulative moving average (momentum=None semantics)
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked)
            return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias, True, factor, self.eps)
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias, False, 0.0, self.eps)

    def to_static(self) -> nn.BatchNorm2d:
        c = self.active_channels()[1]
        bn = nn.BatchNorm2d(c, eps=self.eps, momentum=self.momentum)
        # nn.BatchNorm2d tracks running statistics by default, so its optional buffers exist.
        assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
        with torch.no_grad():
            bn.weight.copy_(self.weight[:c])
            bn.bias.copy_(self.bias[:c])
            bn.running_mean.copy_(self.running_mean[:c])
            bn.running_var.copy_(self.running_var[:c])
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


SLIMMABLE_TYPES = (USConv2d, USLinear, USBatchNorm2d)
