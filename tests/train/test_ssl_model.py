"""The SSL model composition: heads per method, frozen teacher, slimmed projector input, feature hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from us3l.train.ssl_model import SSLModel, build_ssl_model
from us3l.core.errors import ConfigError
from us3l.core.layers import USConv2d, USLinear
from us3l.core.models import get_model


def tiny(ssl="simclr_momentum", method="us3l", layers=(), teacher_width=1.0) -> SSLModel:
    torch.manual_seed(0)
    return build_ssl_model("us_resnet_mini", {"input_size": 8}, ssl, method, 32, 16, 24, layers, teacher_width)


@pytest.mark.parametrize("ssl,method,pred,aux,teacher", [
    ("simclr_momentum", "us3l", False, True, True),
    ("byol", "us3l", True, True, True),
    ("mocov3", "us3l", True, True, True),
    ("simclr_momentum", "naive", False, False, False),
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
