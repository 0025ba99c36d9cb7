"""Statistics on known arrays (computed by hand / numpy's linear percentile definition)."""

import math

import pytest

from us3l.benchmarks.stats import LatencyStats, compute_stats
from us3l.core.errors import UnknownNameError, US3LError


def test_known_array_1_to_100():
    s = compute_stats([float(i) for i in range(1, 101)], batch=1)
    assert s.n == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p90_ms == pytest.approx(90.1)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert s.mean_ms == pytest.approx(50.5)
    assert s.std_ms == pytest.approx(math.sqrt(sum((i - 50.5) ** 2 for i in range(1, 101)) / 99))
    assert s.min_ms == 1.0 and s.max_ms == 100.0
    assert s.cov == pytest.approx(s.std_ms / 50.5)
    assert s.throughput == pytest.approx(1000 / 50.5)


def test_throughput_scales_with_batch_and_constant_runs():
    s = compute_stats([4.0] * 10, batch=8)
    assert s.std_ms == 0.0 and s.cov == 0.0
    assert s.p50_ms == s.p99_ms == 4.0
    assert s.throughput == pytest.approx(2000.0)  # 8 samples per 4 ms


def test_single_run_and_metric_lookup():
    s = compute_stats([2.5])
    assert s.std_ms == 0.0 and s.metric("p95") == 2.5 and s.metric("mean") == 2.5
    with pytest.raises(UnknownNameError, match="valid: mean, p50, p90, p95, p99"):
        s.metric("p42")


def test_roundtrip_dict():
    s = compute_stats([1.0, 2.0, 3.0])
    assert LatencyStats.from_dict({**s.to_dict(), "extra": 1}) == s


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, -2.0], [float("inf")]])
def test_rejects_empty_or_broken_timings(bad):
    with pytest.raises(US3LError):
        compute_stats(bad)
