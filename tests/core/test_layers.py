"""Slimmable layers and the one width context."""

import pytest
import torch
from torch import nn

from us3l.core.context import current_width, use_width
from us3l.core.errors import WidthError
from us3l.core.layers import USBatchNorm2d, USConv2d, USLinear
from us3l.core.models import get_model


def test_context_sets_and_restores_even_on_exception():
    net = get_model("us_resnet_mini")
    assert current_width(net) == 1.0
    with use_width(net, 0.5):
        assert current_width(net) == 0.5
        with use_width(net, 0.25):
            assert current_width(net) == 0.25
        assert current_width(net) == 0.5
    assert current_width(net) == 1.0
    with pytest.raises(ZeroDivisionError):
        with use_width(net, 0.35):
            1 / 0
    assert current_width(net) == 1.0


@pytest.mark.parametrize("bad", [0.0, 1.5, 0.1, float("nan"), "abc"])
def test_context_rejects_widths_outside_the_model_range(bad):
    net = get_model("us_resnet_mini")
    with pytest.raises(WidthError):
        with use_width(net, bad):
            pass
    assert current_width(net) == 1.0


def test_model_width_range_is_enforced():
    net = get_model("us_resnet_mini", width_range=(0.5, 1.0))
    with pytest.raises(WidthError, match=r"\[0.5, 1.0\]"):
        with use_width(net, 0.25):
            pass


def test_forward_does_not_mutate_layer_attributes():
    conv = USConv2d(16, 32, 3, padding=1)
    with use_width(conv, 0.5, width_range=(0.25, 1.0)):
        y = conv(torch.randn(2, 8, 5, 5))
    assert y.shape == (2, 16, 5, 5)
    assert (conv.in_channels, conv.out_channels, conv.groups) == (16, 32, 1)


def test_stem_input_and_head_output_are_never_slimmed():
    stem = USConv2d(3, 64, 3, slim_in=False)
    head = USLinear(512, 2048, slim_in=True, slim_out=False)
    with use_width(nn.ModuleList([stem, head]), 0.25):
        assert stem.active_channels() == (3, 16)
        assert head.active_channels() == (128, 2048)


def test_depthwise_groups_equal_active_channels():
    dw = USConv2d(96, 96, 3, padding=1, ratio=(6, 6), depthwise=True)
    with use_width(dw, 0.3):
        cin, cout = dw.active_channels()
        assert cin == cout == 6 * 8
        static = dw.to_static()
        assert static.groups == 48 and static.weight.shape == (48, 1, 3, 3)
        x = torch.randn(1, 48, 6, 6)
        torch.testing.assert_close(dw(x), static(x))


def test_bn_training_uses_batch_stats_without_touching_running_stats():
    bn = USBatchNorm2d(32).train()
    with use_width(bn, 0.5):
        x = torch.randn(8, 16, 4, 4) * 3 + 2
        y = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(32)) and torch.equal(bn.running_var, torch.ones(32))
    assert y.mean().abs() < 1e-5
    # shared affine: first-c slice of one parameter set
    assert bn.weight.shape == (32,)


def test_wrong_input_width_is_a_clear_error():
    conv = USConv2d(16, 32, 3)
    with pytest.raises(RuntimeError, match="expected 8 input channels"):
        with use_width(conv, 0.5):
            conv(torch.randn(1, 16, 5, 5))
