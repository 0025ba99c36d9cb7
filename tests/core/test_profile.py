"""MACs/params are counted on the static slice and match independent measurements."""

import pytest
from torch import nn

from us3l.core.models import get_model
from us3l.core.profile import count_macs, profile_width
from us3l.core.slicing import slice_to_width


@pytest.mark.parametrize("width,mmacs,mparams", [(1.0, 555.4, 11.17), (0.75, 312.8, 6.29), (0.5, 139.3, 2.80), (0.25, 35.0, 0.70)])
def test_resnet18_cifar_costs_match_deploy_notes(width, mmacs, mparams):
    # docs/deployment.md §15.4 records these on hand-sliced networks with hooks.
    p = profile_width(get_model("us_resnet18_cifar"), width)
    assert p.macs / 1e6 == pytest.approx(mmacs, abs=0.1)
    assert p.params / 1e6 == pytest.approx(mparams, abs=0.01)


def test_profile_counts_the_exported_network():
    net = get_model("us_mobilenet_v2_cifar")
    p = profile_width(net, 0.35)
    static = slice_to_width(net, 0.35)
    assert p.params == sum(t.numel() for t in static.parameters())
    assert p.macs == count_macs(static, net.example_input())
    assert p.feature_dim == 1280 and p.channels == static.channels


def test_conv_mac_formula_on_a_known_layer():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    import torch

    assert count_macs(conv, torch.zeros(1, 8, 10, 10)) == 16 * 10 * 10 * 8 * 9
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(dw, torch.zeros(1, 8, 10, 10)) == 8 * 10 * 10 * 9
