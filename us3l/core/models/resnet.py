"""Universally slimmable ResNets (docs/method.md §4).

State-dict keys follow the reference layout (``conv1``, ``bn1``, ``layerS.B.convK``,
``layerS.B.downsample.{0,1}``), so reference checkpoints map key-for-key.

- ``us_resnet18_cifar`` / ``us_resnet50_cifar``: 3x3 stem, stride 1, no max-pool; default
  PyTorch init (the reference ignores ``zero_init_residual``).
- ``us_resnet18`` / ``us_resnet50``: ImageNet stem (7x7/2 + max-pool), kaiming fan_out init,
  BN gamma 1 / beta 0, optional ``zero_init_residual``.
- ``us_resnet_mini``: a small 3-stage residual CNN (32/64/128) for the embedded digits default.
"""

from __future__ import annotations

import torch
from torch import nn

from ..layers import USBatchNorm2d, USConv2d, USLinear
from ..width import DEFAULT_DIVISOR, DEFAULT_WIDTH_RANGE, channels_at
from .base import SlimmableNet
from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = USConv2d(inp, planes, 3, stride, 1)
        self.bn1 = USBatchNorm2d(planes)
        self.conv2 = USConv2d(planes, planes, 3, 1, 1)
        self.bn2 = USBatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inp, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)

    def last_bn(self) -> USBatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = USConv2d(inp, planes, 1)
        self.bn1 = USBatchNorm2d(planes)
        self.conv2 = USConv2d(planes, planes, 3, stride, 1)  # v1.5: stride on the 3x3
        self.bn2 = USBatchNorm2d(planes)
        self.conv3 = USConv2d(planes, out, 1)
        self.bn3 = USBatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inp, out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)

    def last_bn(self) -> USBatchNorm2d:
        return self.bn3


def _downsample(inp: int, out: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inp == out:
        return None
    return nn.Sequential(USConv2d(inp, out, 1, stride), USBatchNorm2d(out))


class USResNet(SlimmableNet):
    """Slimmable ResNet with a CIFAR (3x3, no pool) or ImageNet (7x7/2 + max-pool) stem."""

    def __init__(self, block: type[BasicBlock | Bottleneck], layers: list[int], stage_channels: tuple[int, ...] = (64, 128, 256, 512),
                 stem: str = "cifar", stem_channels: int | None = None, strides: tuple[int, ...] | None = None,
                 num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 32, in_chans: int = 3,
                 zero_init_residual: bool = False) -> None:
        super().__init__(num_classes, width_range, input_size, in_chans)
        stem_channels = stem_channels or stage_channels[0]
        if stem == "imagenet":
            self.conv1 = USConv2d(in_chans, stem_channels, 7, 2, 3, slim_in=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = USConv2d(in_chans, stem_channels, 3, 1, 1, slim_in=False)
            self.maxpool = nn.Identity()
        self.bn1 = USBatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        strides = strides or (1,) + (2,) * (len(layers) - 1)
        inp = stem_channels
        for i, (planes, n, s) in enumerate(zip(stage_channels, layers, strides), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(inp, planes, s if j == 0 else 1))
                inp = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.num_stages = len(layers)
        self.max_feature_dim = inp
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        if num_classes:
            self.fc = USLinear(inp, num_classes, slim_in=True, slim_out=False)
        if stem == "imagenet":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)
            if zero_init_residual:
                for m in self.modules():
                    if isinstance(m, (BasicBlock, Bottleneck)):
                        nn.init.zeros_(m.last_bn().weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.flatten(self.avgpool(x))

    def feature_dim(self, width: float = 1.0, divisor: int = DEFAULT_DIVISOR) -> int:
        return channels_at(self.max_feature_dim, width, 1, divisor)


@register_model("us_resnet18_cifar")
def us_resnet18_cifar(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 32) -> USResNet:
    """ResNet-18, CIFAR stem (3x3/1, no max-pool), BasicBlock [2,2,2,2]."""
    return USResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width_range=width_range, input_size=input_size)


@register_model("us_resnet50_cifar")
def us_resnet50_cifar(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 32) -> USResNet:
    """ResNet-50, CIFAR stem, Bottleneck [3,4,6,3]."""
    return USResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, width_range=width_range, input_size=input_size)


@register_model("us_resnet18")
def us_resnet18(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 224,
                zero_init_residual: bool = False) -> USResNet:
    """ResNet-18, ImageNet stem (7x7/2 + max-pool), kaiming fan_out init."""
    return USResNet(BasicBlock, [2, 2, 2, 2], stem="imagenet", num_classes=num_classes, width_range=width_range,
                    input_size=input_size, zero_init_residual=zero_init_residual)


@register_model("us_resnet50")
def us_resnet50(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 224,
                zero_init_residual: bool = False) -> USResNet:
    """ResNet-50 (v1.5), ImageNet stem, kaiming fan_out init."""
    return USResNet(Bottleneck, [3, 4, 6, 3], stem="imagenet", num_classes=num_classes, width_range=width_range,
                    input_size=input_size, zero_init_residual=zero_init_residual)


@register_model("us_resnet_mini")
def us_resnet_mini(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 16) -> USResNet:
    """Small residual CNN for the embedded digits default: 3x3 stem (32), BasicBlock stages
    32/64/128 (one block each, strides 1/2/2), global average pooling. ~0.3 M parameters at 1.0."""
    return USResNet(BasicBlock, [1, 1, 1], stage_channels=(32, 64, 128), stem="cifar", num_classes=num_classes,
                    width_range=width_range, input_size=input_size)
