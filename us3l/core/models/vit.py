"""Universally slimmable ViT-Tiny with input-slimmed linears (docs/method.md §13).

Slimming semantics differ from the CNNs: every linear of the blocks (``qkv``, ``proj``, ``fc1``,
``fc2``) reads only the first ``make_divisible(fin * w)`` of its **input** features; outputs, the
residual stream, LayerNorms, the patch embedding and the CLS feature stay full size, so the
feature dimension is ``embed_dim`` at every width and the linear FLOPs scale with ``w``.

Each block slices its input with ``x[..., :fin]`` where ``fin`` is the layer's active input count
(``USLinear.active_channels()[0]``, or ``in_features`` of the plain ``nn.Linear`` that
``slice_to_width`` swaps in), so the slimmable and the static network run the same code.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import USLinear
from ..width import DEFAULT_DIVISOR, DEFAULT_WIDTH_RANGE
from .base import SlimmableNet
from .registry import register_model


def _active_in(layer: nn.Linear) -> int:
    """Input features the layer reads now: active count for ``USLinear``, ``in_features`` for ``nn.Linear``."""
    return layer.active_channels()[0] if isinstance(layer, USLinear) else layer.in_features


def _slim_linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return layer(x[..., : _active_in(layer)])


def sincos_pos_embed_2d(grid: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``(grid*grid, dim)`` (MoCo v3 / MAE style).

    The first half of the channels encodes the column, the second half the row; each half is
    ``[sin(pos * omega), cos(pos * omega)]`` with ``omega_k = temperature ** (-k / (dim/4))``.
    """
    if dim % 4:
        raise ValueError(f"embedding dim must be divisible by 4 for a 2-D sin-cos embedding, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        angles = pos[:, None] * omega[None, :]
        parts += [torch.sin(angles), torch.cos(angles)]
    return torch.cat(parts, dim=1).float()


class Attention(nn.Module):
    """Multi-head self-attention whose ``qkv`` and ``proj`` read the first ``fin_w`` input features."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = USLinear(dim, dim * 3, slim_in=True, slim_out=False)
        self.proj = USLinear(dim, dim, slim_in=True, slim_out=False)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = _slim_linear(self.qkv, x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        out = out.transpose(1, 2).reshape(b, n, c)
        return _slim_linear(self.proj, out)


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``, both reading the first ``fin_w`` input features."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = USLinear(dim, hidden, slim_in=True, slim_out=False)
        self.act = nn.GELU()
        self.fc2 = USLinear(hidden, dim, slim_in=True, slim_out=False)

    def forward(self, x: Tensor) -> Tensor:
        return _slim_linear(self.fc2, self.act(_slim_linear(self.fc1, x)))


class Block(nn.Module):
    """Pre-norm transformer block with full-size residual stream and LayerNorms."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class USViT(SlimmableNet):
    """Vision transformer with input-slimmed block linears; CLS-token features (``embed_dim`` at every width).

    Args:
        num_classes: size of an optional (unslimmed) ``fc`` head; 0 = none.
        width_range: widths the network is trained for.
        input_size / patch_size: square input side and patch side (``input_size % patch_size == 0``).
        embed_dim / depth / num_heads / mlp_ratio: transformer shape.
        stop_grad_conv1: freeze the random patch projection (MoCo v3's stability trick).
    """

    pos_embed: Tensor  # registered as a (non-persistent) buffer in __init__

    def __init__(self, num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 224,
                 patch_size: int = 16, embed_dim: int = 192, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, stop_grad_conv1: bool = True) -> None:
        super().__init__(num_classes=num_classes, width_range=width_range, input_size=input_size)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        self.patch_size, self.embed_dim, self.max_feature_dim = patch_size, embed_dim, embed_dim
        grid = input_size // patch_size
        self.patch_embed = nn.Conv2d(3, embed_dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        pos = torch.cat([torch.zeros(1, embed_dim), sincos_pos_embed_2d(grid, embed_dim)], dim=0)
        self.register_buffer("pos_embed", pos.unsqueeze(0), persistent=False)
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if num_classes:
            self.fc = nn.Linear(embed_dim, num_classes)
        self._init_weights(stop_grad_conv1)

    def _init_weights(self, stop_grad_conv1: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        fan = 3 * self.patch_size * self.patch_size + self.embed_dim
        bound = math.sqrt(6.0 / fan)
        patch_bias = self.patch_embed.bias
        assert patch_bias is not None  # nn.Conv2d is built with its default bias=True
        nn.init.uniform_(self.patch_embed.weight, -bound, bound)
        nn.init.zeros_(patch_bias)
        nn.init.normal_(self.cls_token, std=1e-6)
        if stop_grad_conv1:
            self.patch_embed.weight.requires_grad_(False)
            patch_bias.requires_grad_(False)

    def forward_features(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.input_size, self.input_size):  # the position embedding fixes the grid
            raise ValueError(f"{self.arch or 'USViT'} was built for {self.input_size}px inputs, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return x[:, 0]

    def feature_dim(self, width: float = 1.0, divisor: int = DEFAULT_DIVISOR) -> int:
        """The CLS feature is never slimmed: ``embed_dim`` at every width."""
        del width, divisor
        return self.embed_dim


@register_model("us_vit_tiny")
def us_vit_tiny(num_classes: int = 0, width_range=DEFAULT_WIDTH_RANGE, input_size: int = 224,
                patch_size: int = 16, depth: int = 12, stop_grad_conv1: bool = True) -> USViT:
    """ViT-Tiny (embed 192, 6 heads, depth 12, patch 16, 224 input) with input-slimmed linears (docs/method.md §13)."""
    return USViT(num_classes=num_classes, width_range=width_range, input_size=input_size, patch_size=patch_size,
                 embed_dim=192, depth=depth, num_heads=6, stop_grad_conv1=stop_grad_conv1)
