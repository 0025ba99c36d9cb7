"""The SSL model composition: heads per method, frozen teacher, slimmed projector input, feature hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from us3l.trainer.ssl_model import SSLModel, build_ssl_model
from us3l.core.errors import ConfigError
from us3l.core.context import use_width
from us3l.core.layers import USConv2d, USLinear
from us3l.core.models import get_model


def tiny(ssl="simclr_momentum", method="us3l", layers=(), teacher_width=1.0) -> SSLModel:
    torch.manual_seed(0)
    return build_ssl_model("us_resnet_mini", {"input_size": 8}, ssl, method, 32, 16, 24, layers, teacher_width)


@pytest.mark.parametrize("ssl,method,pred,aux,teacher", [
    ("simclr_momentum", "us3l", False, True, True),
    ("byol", "us3l", True, True, True),
    ("mocov3", "us3l", True, True, True),
    ("simclr_momentum", "naive", False, True, False),
    ("simclr_momentum", "naive-contrastive", False, False, False),
    ("byol", "single", True, False, True),
])
def test_heads_per_method(ssl, method, pred, aux, teacher):
    m = tiny(ssl, method)
    assert (m.predictor is not None) == pred
    assert (m.aux_predictor is not None) == aux
    assert (m.teacher is not None) == teacher


def test_teacher_is_frozen_copy_outside_the_optimizer():
    m = tiny()
    teacher = dict(m.teacher.named_parameters())
    online = dict(m.online_encoder().named_parameters())
    assert teacher.keys() == online.keys()
    for name, p in teacher.items():
        assert not p.requires_grad
        assert torch.equal(p, online[name]) and p.data_ptr() != online[name].data_ptr()
    trainable = {id(p) for p in m.trainable_parameters()}
    assert not trainable & {id(p) for p in m.teacher.parameters()}
    assert {id(p) for p in m.backbone.parameters()} <= trainable
    assert {id(p) for p in m.aux_predictor.parameters()} <= trainable


def test_projector_layout_and_slimmed_input():
    m = tiny()
    first = m.projector[0]
    assert isinstance(first, USLinear) and first.slim_in and not first.slim_out
    assert [type(x) for x in m.projector][1:] == [nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    x = torch.randn(4, 3, 8, 8)
    for w in (0.25, 0.6, 1.0):
        q1, q2, _ = m(x, x, w, "aux")
        assert q1.shape == q2.shape == (4, 16)


def test_width_independent_features_use_plain_linear():
    backbone = get_model("us_mobilenet_v2_cifar")
    m = SSLModel(backbone, "byol", "us3l", 32, 16, 24)
    assert type(m.projector[0]) is nn.Linear and m.projector[0].in_features == 1280
    assert m.projector[3].bias is None  # BYOL's middle Linear has no bias (docs/method.md §5.1)


def test_heads_are_named_for_the_group_regularizer():
    names = [n for n, _ in tiny("byol").named_parameters()]
    assert any(n.startswith("predictor.") for n in names) and any(n.startswith("aux_predictor.") for n in names)
    assert all("predictor" not in n for n in names if n.startswith(("backbone.", "projector.", "teacher.")))


def test_teacher_runs_at_its_width_whatever_the_online_width():
    m = tiny()
    x = torch.randn(6, 3, 8, 8)
    k1, k2, feats = m.teacher_forward(x, x)
    with torch.no_grad():
        ref = m.teacher(x)
    assert torch.allclose(k1, ref) and feats == []
    assert not k1.requires_grad


def test_teacher_width_for_single_width_training():
    m = tiny(method="single", teacher_width=0.5)
    x = torch.randn(6, 3, 8, 8)
    k1, _, _ = m.teacher_forward(x, x)
    with torch.no_grad():
        q1, _, _ = m(x, x, 0.5, "none")  # online == teacher at init
    assert torch.allclose(k1, q1, atol=1e-5)


def test_feature_distillation_maps_student_slice_to_full_channels():
    m = tiny(layers=("layer2.0.bn2",))
    assert isinstance(m.proj_conv["layer2__0__bn2"], USConv2d)
    x = torch.randn(4, 3, 8, 8)
    _, _, extras = m(x, x, 0.25, "aux")
    (f1, f2), = extras["feats"]
    _, _, teacher = m.teacher_forward(x, x)
    (t1, t2), = teacher
    assert f1.shape == t1.shape == (4, 64, 4, 4) and f2.shape == t2.shape
    assert f1.requires_grad and not t1.requires_grad
    assert not m.backbone.layer2[0].bn2._forward_hooks  # hooks are removed after each pass


def test_unknown_distill_layer_lists_valid_ones():
    with pytest.raises(ConfigError, match="layer9.bn2.*valid BN layers: bn1"):
        tiny(layers=("layer9.bn2",))


def test_forward_returns_regularizer_term():
    m = tiny()
    x = torch.randn(4, 3, 8, 8)
    _, _, extras = m(x, x, 1.0, "none", regularizer=lambda model, w, e: torch.tensor(float(e) + w), epoch=2)
    assert float(extras["reg"]) == 3.0


def _reference_basic(block, x):
    """The reference BasicBlock forward: in-place residual add and ReLU on the bn2 output."""
    identity = x if block.downsample is None else block.downsample(x)
    out = torch.relu(block.bn1(block.conv1(x)))
    out = block.bn2(block.conv2(out))
    out += identity
    return torch.relu_(out)


def _reference_bottleneck(block, x):
    """The reference Bottleneck forward: in-place ReLU right after bn2."""
    identity = x if block.downsample is None else block.downsample(x)
    out = torch.relu(block.bn1(block.conv1(x)))
    out = torch.relu_(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(out))
    out += identity
    return torch.relu_(out)


@pytest.mark.parametrize("arch,layer,block_path", [
    ("us_resnet_mini", "layer2.0.bn2", ("layer2", 0)),       # BasicBlock bn2: the block output
    ("us_resnet50_cifar", "layer2.3.bn2", ("layer2", 3)),    # Bottleneck bn2: relu(bn2)
    ("us_resnet50_cifar", "layer3.0.bn3", ("layer3", 0)),    # Bottleneck bn3: the block output
])
def test_distilled_maps_are_what_the_reference_hook_ends_up_holding(arch, layer, block_path):
    """Item 1: the distilled map equals the reference hook's un-cloned bn output after the block's in-place ops.

    Old behaviour caught: the hook cloned the BN output, i.e. distilled the pre-ReLU (and, for a
    BasicBlock bn2, pre-residual) map.
    """
    torch.manual_seed(0)
    backbone = get_model(arch, num_classes=0, input_size=8)
    m = SSLModel(backbone, "simclr_momentum", "us3l", 32, 16, 24, distill_layers=(layer,))
    x = torch.randn(4, 3, 8, 8)
    stage, index = block_path
    block = getattr(m.backbone, stage)[index]
    bn = dict(m.backbone.named_modules())[layer]
    kept = []
    handle = bn.register_forward_hook(lambda _m, _i, out: kept.append(out))  # no clone, as the reference
    reference = _reference_basic if type(block).__name__ == "BasicBlock" else _reference_bottleneck
    block.forward = lambda inp, b=block: reference(b, inp)
    with use_width(m.backbone, 0.5):
        m.backbone(x)
    handle.remove()
    del block.forward  # back to the class's forward
    with use_width(m.backbone, 0.5), m._capture(m.backbone, (layer,)) as feats:
        m.backbone(x)
    got = feats[layer][0]
    assert got.shape == kept[0].shape and torch.allclose(got, kept[0], atol=1e-6)
    assert (got >= 0).all() and got.requires_grad  # post-ReLU, and gradients flow through the ReLU


def test_distill_layers_outside_resnet_blocks_are_refused():
    """Only ResNet BN layers have a defined post-ReLU map; anything else is one clear error."""
    with pytest.raises(ConfigError, match="valid BN layers: bn1, layer1.0.bn1, layer1.0.bn2, layer2.0.bn1"):
        tiny(layers=("layer1.0.conv1",))
    with pytest.raises(ConfigError, match="ResNet backbones only .* not USMobileNetV2"):
        SSLModel(get_model("us_mobilenet_v2_cifar"), "simclr_momentum", "us3l", 32, 16, 24,
                 distill_layers=("features.1.body.1",))


def test_mocov3_heads_are_bias_free_and_end_in_a_plain_batch_norm():
    """Item 3: MoCo v3 projector and predictors: no linear bias, last layer BatchNorm1d(affine=False).

    Old behaviour caught: biased linears and no final BN (the BYOL/SimCLR layout reused).
    """
    m = tiny("mocov3")
    for head in (m.projector, m.predictor, m.aux_predictor):
        linears = [x for x in head if isinstance(x, (nn.Linear, USLinear))]
        assert linears and all(x.bias is None for x in linears)
        last = head[-1]
        assert isinstance(last, nn.BatchNorm1d) and not last.affine and last.weight is None
    assert [type(x) for x in m.predictor] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert len(m.projector) == 8
    q1, _, _ = m(torch.randn(6, 3, 8, 8), torch.randn(6, 3, 8, 8), 0.5, "aux")
    assert torch.allclose(q1.mean(0), torch.zeros(16), atol=1e-5)  # the affine-free BN output
    assert tiny("byol").projector[-1].bias is not None  # other methods keep their layout


def test_mobilenet_projector_first_layer_is_initialised_like_the_reference_fc():
    """Item 4: MobileNetV2's projector layer 1 (the reference's backbone fc) is N(0, 0.01), bias 0.

    Old behaviour caught: PyTorch's default Linear init (uniform, std ~0.016, non-zero bias).
    """
    torch.manual_seed(0)
    m = SSLModel(get_model("us_mobilenet_v2_cifar"), "simclr_momentum", "us3l", 2048, 256, 2048)
    first = m.projector[0]
    assert torch.equal(first.bias, torch.zeros_like(first.bias))
    assert float(first.weight.detach().std()) == pytest.approx(0.01, rel=0.02) and abs(float(first.weight.detach().mean())) < 1e-3
    assert torch.equal(m.teacher.projector[0].weight, first.weight)  # the teacher copies it
