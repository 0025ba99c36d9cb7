"""Universally slimmable MobileNetV2 (docs/method.md §4).

Keys follow the reference layout: ``features.0.{0,1}`` stem, ``features.i.body.*`` inverted
residual blocks, ``features.18.{0,1}`` last 1x1 conv (input slimmed only) + plain
``nn.BatchNorm2d(1280)``. Hidden width = ``t * make_divisible(inp * w)`` (ratio form);
depthwise groups = active channels. The feature dimension is 1280 at every width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..layers import USBatchNorm2d, USConv2d
from ..width import DEFAULT_WIDTH_RANGE
from .base import SlimmableNet
from .registry import register_model

# (expansion t, output channels c, repeats n, stride s); the second stride is the stem-dependent one.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, None), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
LAST_CHANNELS = 1280


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, outp: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = inp * t
        self.residual = stride == 1 and inp == outp
        layers: list[nn.Module] = []
        if t != 1:
            layers += [USConv2d(inp, hidden, 1, ratio=(1, t)), USBatchNorm2d(hidden, ratio=t), nn.ReLU6(inplace=True)]
        layers += [
            USConv2d(hidden, hidden, 3, stride, 1, ratio=(t, t), depthwise=True),
            USBatchNorm2d(hidden, ratio=t),
            nn.ReLU6(inplace=True),
            USConv2d(hidden, outp, 1, ratio=(t, 1)),
            USBatchNorm2d(outp),
        ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class USMobileNetV2(SlimmableNet):
    def __init__(self, num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 224,
                 in_chans: int = 3, small_input: bool = False) -> None:
        super().__init__(num_classes, width_range, input_size, in_chans)
        s = 1 if small_input else 2  # CIFAR variant: stride 1 in the stem and the 24-channel stage
        features: list[nn.Module] = [
            nn.Sequential(USConv2d(in_chans, 32, 3, s, 1, slim_in=False), USBatchNorm2d(32), nn.ReLU6(inplace=True))
        ]
        inp = 32
        for t, c, n, stride in SETTINGS:
            stride = s if stride is None else stride
            for i in range(n):
                features.append(InvertedResidual(inp, c, stride if i == 0 else 1, t))
                inp = c
        features.append(nn.Sequential(USConv2d(inp, LAST_CHANNELS, 1, slim_out=False), nn.BatchNorm2d(LAST_CHANNELS),
                                      nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.max_feature_dim = LAST_CHANNELS
        if num_classes:
            self.fc = nn.Linear(LAST_CHANNELS, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.flatten(self.avgpool(self.features(x)))

    def feature_dim(self, width: float = 1.0, divisor: int = 8) -> int:
        return LAST_CHANNELS


@register_model("us_mobilenet_v2_cifar")
def us_mobilenet_v2_cifar(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 32) -> USMobileNetV2:
    """MobileNetV2 for 32x32 inputs: stride 1 in the stem and in the 24-channel stage."""
    return USMobileNetV2(num_classes, width_range, input_size, small_input=True)


@register_model("us_mobilenet_v2")
def us_mobilenet_v2(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 224) -> USMobileNetV2:
    """MobileNetV2 for ImageNet-size inputs (stride-2 stem)."""
    return USMobileNetV2(num_classes, width_range, input_size)
