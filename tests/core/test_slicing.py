"""The flagship invariant: slimmable model at w == slice_to_width(w), with exact channel counts."""

import pytest
import torch
from torch import nn

from us3l.core.bn import bn_stats, calibrate_bn, load_bn_stats
from us3l.core.context import use_width
from us3l.core.layers import USBatchNorm2d, USConv2d
from us3l.core.models import get_model, list_models
from us3l.core.slicing import STANDARD_LEAVES, channel_config, find_aliases, is_static, slice_to_width
from us3l.core.width import channels_at

WIDTHS = ["min", 0.3, 0.35, 0.5, 0.73, 1.0]


def _input_size(model) -> int:
    return min(model.input_size, 32)  # adaptive pooling: ImageNet nets run on 32 px in tests


def small_model(name: str):
    """Each architecture at a test-friendly input size (the ViT's grid is fixed at build time)."""
    if "vit" in name:
        return get_model(name, input_size=32, patch_size=8)
    return get_model(name)


@pytest.fixture(scope="module", params=list_models())
def arch(request):
    torch.manual_seed(0)
    return request.param, small_model(request.param)


def _standard_leaves_only(module: nn.Module) -> bool:
    leaves = [m for m in module.modules() if not list(m.children())]
    return all(type(m) in STANDARD_LEAVES for m in leaves)


def test_slice_equals_slimmable_for_every_architecture(arch):
    name, model = arch
    size = _input_size(model)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, size, size, generator=gen) for _ in range(2)]
    x = torch.randn(3, 3, size, size, generator=gen)
    for w in WIDTHS:
        w = model.width_range[0] if w == "min" else w
        calibrate_bn(model, calib, w)
        model.eval()
        with use_width(model, w), torch.no_grad():
            expected = model(x)
        static = slice_to_width(model, w)
        with torch.no_grad():
            got = static(x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5, (name, w)
        assert is_static(static) and _standard_leaves_only(static), (name, w)
        # every static conv has exactly the rule's channel counts
        for lname, m in model.named_modules():
            if isinstance(m, USConv2d):
                sm = static.get_submodule(lname)
                assert type(sm) is nn.Conv2d
                exp_out = channels_at(m.out_channels, w, m.ratio[1]) if m.slim_out else m.out_channels
                exp_in = channels_at(m.in_channels, w, m.ratio[0]) if m.slim_in else m.in_channels
                assert sm.out_channels == exp_out and sm.in_channels == exp_in, (lname, w)
                if m.depthwise:
                    assert sm.groups == sm.in_channels
        assert expected.shape[-1] == model.feature_dim(w)


def test_resnet18_cifar_stage_channels_follow_method_table():
    net = get_model("us_resnet18_cifar")
    for w, expected in {0.25: (16, 32, 64, 128), 0.3: (24, 40, 80, 152), 0.35: (24, 48, 88, 176)}.items():
        cfg = channel_config(net, w)
        assert (cfg["layer1.1.conv2"], cfg["layer2.1.conv2"], cfg["layer3.1.conv2"], cfg["layer4.1.conv2"]) == expected


def test_mobilenet_last_layer_and_hidden_widths():
    net = get_model("us_mobilenet_v2_cifar")
    cfg = channel_config(net, 0.3)
    assert cfg["features.18.0"] == 1280  # never slimmed on the output
    assert cfg["features.2.body.0"] == 6 * channels_at(16, 0.3)  # hidden = t * rounded(inp*w)
    static = slice_to_width(net, 0.3)
    assert static.get_submodule("features.18.1").num_features == 1280


def test_slicing_leaves_the_source_model_unchanged():
    net = get_model("us_resnet_mini")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    slice_to_width(net, 0.35)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, USBatchNorm2d) for m in net.modules())


def test_aliases_found_for_identical_channel_configurations():
    net = get_model("us_resnet_mini")
    aliases = find_aliases(net, [0.35, 0.4, 0.6, 0.65, 1.0])
    assert aliases == {0.35: 0.35, 0.4: 0.35, 0.6: 0.6, 0.65: 0.6, 1.0: 1.0}


def test_input_only_slimming_is_not_an_alias():
    if "us_vit_tiny" not in list_models():
        pytest.skip("ViT not registered")
    vit = small_model("us_vit_tiny")
    assert find_aliases(vit, [0.25, 0.5, 1.0]) == {0.25: 0.25, 0.5: 0.5, 1.0: 1.0}


def test_snapped_slice_is_exact_at_the_snapped_configuration():
    torch.manual_seed(0)
    net = get_model("us_resnet18_cifar")
    calib = [torch.randn(8, 3, 32, 32)]
    calibrate_bn(net, calib, 0.35, divisor=16)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with use_width(net, 0.35, divisor=16), torch.no_grad():
        expected = net(x)
    static = slice_to_width(net, 0.35, divisor=16)
    assert all(c % 16 == 0 for c in static.channels.values())
    assert (static(x) - expected).abs().max() <= 1e-5


def test_bn_calibration_is_cumulative_and_exact():
    torch.manual_seed(0)
    net = get_model("us_resnet_mini")
    batches = [torch.randn(16, 3, 16, 16) * (i + 1) for i in range(3)]
    calibrate_bn(net, batches, 0.5)
    # the stem BN sees conv1 outputs; compare with the average of per-batch statistics
    with use_width(net, 0.5), torch.no_grad():
        outs = [net.conv1(b) for b in batches]
    c = outs[0].shape[1]
    means = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    vars_ = torch.stack([o.var(dim=(0, 2, 3), unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(net.bn1.running_mean[:c], means, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net.bn1.running_var[:c], vars_, rtol=1e-4, atol=1e-5)
    assert net.training  # mode restored


def test_bn_stats_round_trip_between_models():
    torch.manual_seed(0)
    a, b = get_model("us_resnet_mini"), get_model("us_resnet_mini")
    b.load_state_dict(a.state_dict())
    calibrate_bn(a, [torch.randn(8, 3, 16, 16)], 0.35)
    load_bn_stats(b, bn_stats(a, 0.35), 0.35)
    x = torch.randn(2, 3, 16, 16)
    a.eval(), b.eval()
    with use_width(a, 0.35), use_width(b, 0.35), torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
