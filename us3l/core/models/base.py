"""Common base of every slimmable architecture."""

from __future__ import annotations

import torch
from torch import nn

from ..width import DEFAULT_DIVISOR, DEFAULT_WIDTH_RANGE


class SlimmableNet(nn.Module):
    """A universally slimmable backbone.

    Attributes:
        arch / arch_kwargs: registry name and full constructor arguments (set by ``get_model``).
        width_range: ``(min, max)`` width the network was built for.
        input_size: default square input resolution; in_chans: input channels (never slimmed).
        max_feature_dim: pooled feature dimension at width 1.0.
        num_classes: size of the optional ``fc`` head (0 = no head; ``forward`` returns features).
    """

    arch: str = ""
    arch_kwargs: dict = {}
    fc: nn.Module  # the classification head, built by subclasses only when num_classes > 0
    max_feature_dim: int  # set by every subclass's __init__

    def __init__(self, num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 32,
                 in_chans: int = 3) -> None:
        super().__init__()
        lo, hi = float(width_range[0]), float(width_range[1])
        if not (0 < lo <= hi <= 1.0):
            from ..errors import ConfigError

            raise ConfigError(f"width_range {tuple(width_range)} is invalid; valid: 0 < min <= max <= 1.0")
        self.width_range = (lo, hi)
        self.input_size, self.in_chans, self.num_classes = int(input_size), int(in_chans), int(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.forward_features(x)
        return self.fc(feats) if self.num_classes else feats

    def feature_dim(self, width: float = 1.0, divisor: int = DEFAULT_DIVISOR) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the default shape (for tracing and profiling)."""
        return torch.zeros(batch, self.in_chans, self.input_size, self.input_size)
