"""Collapse detector: std of normalised projections, effective rank, side-effect-free measurement."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from us3l.trainer.collapse import CollapseError, CollapseStats, effective_rank, embedding_std, measure_collapse, report_collapse
from us3l.trainer.ssl_model import build_ssl_model


def test_std_of_spread_vs_collapsed_embeddings():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(4096, 64, generator=g)
    assert embedding_std(spread) * math.sqrt(64) == pytest.approx(1.0, abs=0.03)
    collapsed = torch.ones(256, 64) + 1e-4 * torch.randn(256, 64, generator=g)
    assert embedding_std(collapsed) * math.sqrt(64) < 0.01


def test_effective_rank_counts_directions():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 32, generator=g)
    low = torch.randn(512, 3, generator=g) @ basis  # three directions
    assert 1.5 < effective_rank(low) <= 3.0 + 1e-4
    assert effective_rank(torch.randn(512, 32, generator=g)) > 25
    assert effective_rank(torch.ones(16, 8)) == 1.0


def test_measure_collapse_reports_every_width_and_leaves_state_untouched():
    torch.manual_seed(0)
    model = build_ssl_model("us_resnet_mini", {"input_size": 8}, "simclr_momentum", "us3l", 32, 16, 24)
    enc = model.online_encoder().eval()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    stats = measure_collapse(enc, torch.randn(32, 3, 8, 8), [0.25, 1.0], threshold=0.1)
    assert [s.width for s in stats] == [0.25, 1.0]
    assert all(0 < s.std_ratio and s.eff_rank >= 1 and not s.collapsed for s in stats)
    after = enc.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN1d running stats restored
    assert not enc.training


def test_measure_collapse_flags_a_constant_encoder():
    class Constant(torch.nn.Module):
        width_range = (0.25, 1.0)

        def forward(self, x):
            return torch.ones(x.shape[0], 16)

    (s,) = measure_collapse(Constant(), torch.randn(8, 3, 4, 4), [1.0], threshold=0.1)
    assert s.collapsed and s.std_ratio < 1e-6 and s.eff_rank == 1.0


def test_report_warns_or_fails(caplog):
    ok = CollapseStats(1.0, 0.1, 0.8, 30.0, False)
    bad = CollapseStats(0.25, 0.001, 0.01, 1.0, True)
    assert report_collapse([ok], 3, fail=True) == []
    with caplog.at_level(logging.WARNING, logger="us3l.trainer.collapse"):
        assert report_collapse([ok, bad], 3, fail=False) == [0.25]
    assert "collapsed at width(s) 0.25 after epoch 3" in caplog.text
    with pytest.raises(CollapseError, match="--fail-on-collapse"):
        report_collapse([ok, bad], 3, fail=True)
