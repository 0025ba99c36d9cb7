"""Each loss of docs/method.md §6 against an explicit-loop hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from us3l.trainer.losses import CosineSimilarityLoss, FeatureDistillLoss, InfoNCELoss, MoCoV3Loss, MomentumInfoNCELoss


def _unit(v: torch.Tensor) -> list[float]:
    n = math.sqrt(sum(float(a) ** 2 for a in v))
    return [float(a) / n for a in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def _ntx_loop(a: torch.Tensor, b: torch.Tensor, t: float) -> float:
    """ntx(a, b) written exactly as docs/method.md §6 states it."""
    batch = a.shape[0]
    rows = [_unit(a[i]) for i in range(batch)] + [_unit(b[i]) for i in range(batch)]
    total = 0.0
    for i in range(2 * batch):
        k = i % batch
        positive = math.exp(_dot(rows[k], rows[batch + k]) / t)
        denom = sum(math.exp(_dot(rows[i], rows[j]) / t) for j in range(2 * batch) if j != i)
        total += -math.log(positive / denom)
    return total / (2 * batch)


def _cos_mean(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(_dot(_unit(a[i]), _unit(b[i])) for i in range(a.shape[0])) / a.shape[0]


@pytest.fixture
def views():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(5, 7, generator=g, dtype=torch.float64) for _ in range(4)]


def test_cosine_similarity_loss_matches_hand_computation(views):
    q1, q2, k1, k2 = views
    expected = 0.5 * (-_cos_mean(q1, k2) - _cos_mean(q2, k1))
    got = CosineSimilarityLoss()((q1, q2), (k1, k2))
    assert got.dim() == 0
    assert float(got) == pytest.approx(expected, abs=1e-10)
    assert float(CosineSimilarityLoss()((q1, q2), (q2, q1))) == pytest.approx(-1.0)


@pytest.mark.parametrize("temperature", [0.5, 0.2, 1.0])
def test_momentum_infonce_matches_hand_computation(views, temperature):
    q1, q2, k1, k2 = views
    expected = 0.5 * (_ntx_loop(q1, k2, temperature) + _ntx_loop(q2, k1, temperature))
    got = MomentumInfoNCELoss(temperature)((q1, q2), (k1, k2))
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_momentum_infonce_stops_gradient_at_momentum_side(views):
    q1, q2, k1, k2 = (v.clone().requires_grad_(True) for v in views)
    MomentumInfoNCELoss()((q1, q2), (k1, k2)).backward()
    assert q1.grad is not None and q1.grad.abs().sum() > 0
    assert k1.grad is None and k2.grad is None


def test_plain_infonce_matches_hand_computation_and_flows_both_ways(views):
    z1, z2 = (v.clone().requires_grad_(True) for v in views[:2])
    loss = InfoNCELoss(temperature=0.5)(z1, z2)
    assert float(loss.detach()) == pytest.approx(_ntx_loop(views[0], views[1], 0.5), rel=1e-10)
    loss.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_mocov3_matches_hand_computation(views):
    q1, q2, k1, k2 = views
    t = 0.2

    def ctr(q, k):
        total = 0.0
        for i in range(q.shape[0]):
            logits = [_dot(_unit(q[i]), _unit(k[j])) / t for j in range(k.shape[0])]
            total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
        return 2 * t * total / q.shape[0]

    got = MoCoV3Loss(temperature=t)((q1, q2), (k1, k2))
    assert float(got) == pytest.approx(ctr(q1, k2) + ctr(q2, k1), rel=1e-10)


def test_feature_distill_is_cross_view_mean_over_layers():
    g = torch.Generator().manual_seed(1)
    student = [(torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)) for _ in range(2)]
    teacher = [(torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)) for _ in range(2)]
    terms = []
    for (s1, s2), (t1, t2) in zip(student, teacher):
        for s, t in ((s1, t2), (s2, t1)):
            terms.append(sum(float(a - b) ** 2 for a, b in zip(s.flatten(), t.flatten())) / s.numel())
    got = FeatureDistillLoss()(student, teacher)
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    t_req = [(a.clone().requires_grad_(True), b.clone().requires_grad_(True)) for a, b in teacher]
    s_req = [(a.clone().requires_grad_(True), b.clone().requires_grad_(True)) for a, b in student]
    FeatureDistillLoss()(s_req, t_req).backward()
    assert all(a.grad is None and b.grad is None for a, b in t_req)
    assert all(a.grad is not None for a, _ in s_req)
    with pytest.raises(ValueError):
        FeatureDistillLoss()(student, teacher[:1])


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf")])
@pytest.mark.parametrize("cls", [MomentumInfoNCELoss, InfoNCELoss, MoCoV3Loss])
def test_temperature_validated_at_construction(cls, bad):
    with pytest.raises(ValueError, match="temperature"):
        cls(temperature=bad)
