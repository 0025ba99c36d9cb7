"""Group regularization (docs/method.md §9): bins, ramp values, exclusions, gradient = width-aware weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from us3l.trainer.group_reg import GroupRegularizer

LAM = 5e-5


def _multipliers(reg: GroupRegularizer, epoch: int) -> list[float]:
    return [round(c / reg.lam, 6) for c in reg.coefficients(epoch)]


def test_r18_ramp_w0_e400():
    reg = GroupRegularizer(LAM, alpha=0.05, bins=8, warmup_epochs=0, total_epochs=400)
    assert reg.alpha_at(0) == 0.0 and _multipliers(reg, 0) == [1.0] * 8
    assert reg.alpha_at(100) == pytest.approx(0.025)
    assert _multipliers(reg, 100) == pytest.approx([1 - 0.025 * i for i in range(8)])
    for epoch in (200, 300, 399):
        assert reg.alpha_at(epoch) == pytest.approx(0.05)
        assert _multipliers(reg, epoch) == pytest.approx([1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65])


def test_warmup_200_jumps():
    reg = GroupRegularizer(LAM, warmup_epochs=200, total_epochs=400)
    assert _multipliers(reg, 0) == [1.0] * 8 and _multipliers(reg, 199) == [1.0] * 8
    assert _multipliers(reg, 200)[-1] == pytest.approx(0.65)
    reg = GroupRegularizer(LAM, warmup_epochs=50, total_epochs=100)  # ImageNet: W = E/2 -> jump at 50
    assert reg.alpha_at(49) == 0.0 and reg.alpha_at(50) == pytest.approx(0.05)


def test_exp_mode():
    reg = GroupRegularizer(1.0, alpha=0.5, mode="exp", total_epochs=2)
    assert reg.coefficients(1) == pytest.approx([0.5**i for i in range(8)])


def test_masks_by_rank_and_binning():
    reg = GroupRegularizer(1.0, total_epochs=2)  # epoch 1 >= E//2: alpha = 0.05
    coeffs = torch.tensor(reg.coefficients(1))
    m = reg.mask(torch.zeros(64, 3, 3, 3), 1)
    assert m.shape == (64, 1, 1, 1)
    assert torch.allclose(m.flatten(), coeffs.repeat_interleave(8))
    m12 = reg.mask(torch.zeros(12), 1)  # bin size 1, last bin takes the remainder
    assert torch.allclose(m12, torch.cat([coeffs[:7], coeffs[7].repeat(5)]))
    m4 = reg.mask(torch.zeros(4, 2, 1, 1), 1)  # fewer channels than bins: all in the last bin (reference quirk)
    assert torch.allclose(m4.flatten(), coeffs[7].repeat(4))
    assert reg.mask(torch.zeros(5, 7), 1).item() == 1.0  # 2-D: uniform lambda
    assert reg.mask(torch.zeros(64, 3, 3, 3), 1) is m  # cached within the epoch


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)
        self.predictor = nn.Linear(4, 4)
        self.teacher = nn.Linear(4, 4)
        self.proj_conv = nn.Conv2d(16, 16, 1)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def _hand(model: _Toy, reg: GroupRegularizer, epoch: int, names: list[str]) -> float:
    coeffs = reg.coefficients(epoch)
    total = 0.0
    for name, p in model.named_parameters():
        if name not in names:
            continue
        if p.dim() in (1, 4):
            size = p.shape[0] // reg.bins
            for c in range(p.shape[0]):
                b = min(c // size, reg.bins - 1) if size else reg.bins - 1
                total += coeffs[b] * float(p[c].detach().double().pow(2).sum())
        else:
            total += reg.lam * float(p.detach().double().pow(2).sum())
    return total


def test_forward_sum_and_exclusions():
    model = _Toy()
    reg = GroupRegularizer(0.1, total_epochs=10)
    base = ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.weight", "head.bias"]
    sub = float(reg(model, 0.5, 7).detach())
    assert sub == pytest.approx(_hand(model, reg, 7, base + ["predictor.weight", "predictor.bias"]), rel=1e-5)
    full = float(reg(model, 1.0, 7).detach())  # predictor skipped at the max width
    assert full == pytest.approx(_hand(model, reg, 7, base), rel=1e-5)


def test_gradient_equals_weight_decay_during_warmup():
    model = _Toy()
    wd = 1e-2
    reg = GroupRegularizer(wd / 2, warmup_epochs=5, total_epochs=10)
    reg(model, 0.5, 0).backward()
    assert torch.allclose(model.conv.weight.grad, wd * model.conv.weight.detach(), atol=1e-9)
    assert model.teacher.weight.grad is None and model.proj_conv.weight.grad is None


@pytest.mark.parametrize("kwargs", [{"lam": -1.0}, {"lam": 1.0, "bins": 0}, {"lam": 1.0, "mode": "cubic"},
                                    {"lam": 1.0, "total_epochs": 0}])
def test_validation(kwargs):
    with pytest.raises(ValueError):
        GroupRegularizer(**kwargs)


@pytest.mark.parametrize("width", [0.5, 1.0])
def test_gradient_form_equals_autograd_form_and_keeps_the_value(width):
    """Item 5: ``add_grad_`` adds exactly d R / d p = 2 Lambda p and ``value`` equals ``forward``.

    Old behaviour caught: the regulariser only existed as an autograd term (no ``add_grad_`` /
    ``value``), building ~4 small ops per tensor and their backward at every width step.
    """
    model = _Toy()
    reg = GroupRegularizer(0.1, alpha=0.05, total_epochs=10)
    reg(model, width, 3).backward()  # a ramped epoch: bins differ
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    model.conv.weight.grad = torch.ones_like(model.conv.weight)  # an existing loss gradient is added to
    reg.add_grad_(model, width, 3)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys()  # same parameters (teacher, proj_conv, frozen, max-width predictor skipped)
    for n, g in got.items():
        extra = 1.0 if n == "conv.weight" else 0.0
        assert torch.allclose(g, expected[n] + extra, atol=1e-7), n
    assert float(reg.value(model, width, 3)) == pytest.approx(float(reg(model, width, 3).detach()), rel=1e-6)
    assert not reg.value(model, width, 3).requires_grad


def test_gradient_form_multiplies_by_the_amp_loss_scale():
    """Under AMP the gradients are scaled; the added term must be scaled alike (a tensor: no host sync)."""
    model = _Toy()
    reg = GroupRegularizer(0.1, total_epochs=10)
    reg(model, 0.5, 7).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    reg.add_grad_(model, 0.5, 7, scale=torch.tensor(1024.0))
    for n, p in model.named_parameters():
        if n in expected:
            assert torch.allclose(p.grad, 1024.0 * expected[n], rtol=1e-6), n
