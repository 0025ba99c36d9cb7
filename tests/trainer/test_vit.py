"""us_vit_tiny (docs/method.md §13): input-slimmed linears, slicing invariant, full-size CLS features."""

from __future__ import annotations

import pytest
import torch

from us3l.core.context import use_width
from us3l.core.models import get_model, list_models
from us3l.core.models.vit import sincos_pos_embed_2d
from us3l.core.slicing import STANDARD_LEAVES, is_static, slice_to_width
from us3l.core.width import make_divisible

WIDTHS = [0.25, 0.3, 0.35, 0.5, 0.73, 1.0]


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return get_model("us_vit_tiny", input_size=32, patch_size=8, depth=3).eval()


def test_registered_with_paper_shape():
    assert "us_vit_tiny" in list_models()
    net = get_model("us_vit_tiny", input_size=32, patch_size=8)
    assert len(net.blocks) == 12 and net.embed_dim == 192 and net.blocks[0].attn.num_heads == 6
    assert net.max_feature_dim == 192 and net.arch_kwargs["patch_size"] == 8
    assert not net.patch_embed.weight.requires_grad  # stop_grad_conv1


@pytest.mark.parametrize("width", WIDTHS)
def test_use_width_equals_static_slice(vit, width):
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with use_width(vit, width), torch.no_grad():
        dynamic = vit(x)
    static = slice_to_width(vit, width)
    with torch.no_grad():
        out = static(x)
    assert out.shape == (2, 192) and vit.feature_dim(width) == 192
    assert torch.allclose(dynamic, out, atol=1e-5)
    assert is_static(static)
    leaves = [m for m in static.modules() if not list(m.children())]
    assert all(isinstance(m, STANDARD_LEAVES) for m in leaves)
    blk = static.blocks[0]
    assert blk.attn.qkv.in_features == make_divisible(192 * width) and blk.attn.qkv.out_features == 576
    assert blk.mlp.fc2.in_features == make_divisible(768 * width) and blk.mlp.fc2.out_features == 192


def test_widths_differ_and_only_active_inputs_get_gradients(vit):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), use_width(vit, 0.25):
        small = vit(x)
    with torch.no_grad():
        full = vit(x)
    assert not torch.allclose(small, full)
    vit.zero_grad()
    with use_width(vit, 0.5):
        (vit(x) * torch.randn(2, 192)).sum().backward()  # a plain sum of a LayerNorm output has zero gradient
    grad = vit.blocks[0].mlp.fc2.weight.grad
    assert grad[:, 384:].abs().sum() == 0 and grad[:, :384].abs().sum() > 0
    vit.zero_grad()


def test_sincos_embedding():
    pe = sincos_pos_embed_2d(4, 16)
    assert pe.shape == (16, 16)
    assert torch.allclose(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))
    assert not torch.allclose(pe[1], pe[4])  # column vs row positions differ
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(4, 10)


def test_wrong_input_size_is_a_clear_error(vit):
    with pytest.raises(ValueError, match="32px"):
        vit(torch.randn(1, 3, 16, 16))
