"""EMA teacher: update rule over parameters only, frozen gradients, momentum schedules (docs/method.md §5.3, §13)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from us3l.trainer.ema import constant_momentum, cosine_momentum, deactivate_requires_grad, update_momentum


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_update_momentum_values_parameters_only():
    online, ema = _net(), _net()
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
        online[1].running_mean.fill_(5.0)
    ema_before = copy.deepcopy(ema)
    update_momentum(online, ema, 0.99)
    for p_o, p_e, p_b in zip(online.parameters(), ema.parameters(), ema_before.parameters()):
        assert torch.allclose(p_e, 0.99 * p_b + 0.01 * p_o, atol=1e-7)
    assert torch.equal(ema[1].running_mean, ema_before[1].running_mean)  # buffers untouched
    update_momentum(online, ema, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(online.parameters(), ema.parameters()))


def test_deactivate_requires_grad_and_no_graph():
    online = _net()
    ema = deactivate_requires_grad(copy.deepcopy(online))
    assert not any(p.requires_grad for p in ema.parameters())
    update_momentum(online, ema, 0.5)
    assert all(p.grad_fn is None for p in ema.parameters())


def test_update_momentum_validates():
    with pytest.raises(ValueError):
        update_momentum(_net(), _net(), 1.5)
    with pytest.raises(ValueError):
        update_momentum(_net(), nn.Linear(4, 3), 0.9)


def test_momentum_schedules():
    assert cosine_momentum(0, 100) == pytest.approx(0.99)
    assert cosine_momentum(50, 100) == pytest.approx(0.995)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(500, 100) == pytest.approx(1.0)
    values = [cosine_momentum(s, 10) for s in range(11)]
    assert values == sorted(values)
    assert constant_momentum(7, 100) == 0.99 and constant_momentum(base=0.9) == 0.9
