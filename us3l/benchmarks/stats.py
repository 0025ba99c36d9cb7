"""Latency statistics computed by us from raw per-run timings.

Every runner (local loop, remote agent, trtexec ``--exportTimes``) hands back a list of
per-run latencies in milliseconds; this module is the single place that turns them into
p50/p90/p95/p99, mean, std, coefficient of variation, throughput and a bootstrap confidence
interval for every statistic (:func:`bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from us3l.core.errors import US3LError

METRICS = ("p50", "p90", "p95", "p99", "mean")


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one (width, batch) measurement; all times in milliseconds.

    Attributes:
        n: number of timed runs.
        p50_ms / p90_ms / p95_ms / p99_ms: percentiles (linear interpolation).
        mean_ms / std_ms / min_ms / max_ms: moments and extremes (``std`` with ``ddof=1``).
        cov: coefficient of variation ``std / mean`` of every run.
        cov_p99: the same over the runs at or below the p99: without the rare spikes a shared
            virtual machine gives even when quiet (one 8 ms run among 20,000 of 0.04 ms lifts
            ``cov`` to 2.7), so the busy-machine check reads it (:mod:`us3l.benchmarks.stability`).
        throughput: samples per second at this batch, ``batch * 1000 / mean_ms``.
        batch: batch size the runs used.
        ci_ms: ``{metric: [low, high]}``, the 95 % bootstrap interval of each statistic (``None`` for
            points measured before intervals existed, or from a stdout summary).
    """

    n: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    cov: float
    throughput: float
    batch: int
    ci_ms: dict | None = None
    cov_p99: float | None = None

    def metric(self, name: str) -> float:
        """Value of ``name`` in :data:`METRICS` (``"p95"`` -> ``p95_ms``)."""
        if name not in METRICS:
            from us3l.core.errors import unknown_name

            raise unknown_name("latency metric", name, list(METRICS))
        return float(getattr(self, f"{name}_ms"))

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LatencyStats:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 400


def bootstrap_ci(times_ms: Iterable[float], level: float = CI_LEVEL, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> dict[str, list[float]]:
    """Percentile-bootstrap confidence interval of every statistic in :data:`METRICS`.

    Resamples the runs with replacement (seeded, so a report is reproducible). Runs of one point
    are not independent (they come in rounds, and drift), so the interval is a lower bound on the
    real uncertainty; it still separates a CoV of 2 % from one of 100 %.

    Returns:
        ``{"p50": [low, high], ..., "mean": [low, high]}`` in ms (a single run gives a zero-width interval).
    """
    arr = np.asarray(list(times_ms), dtype=np.float64)
    if arr.size < 2:
        v = float(arr[0]) if arr.size else 0.0
        return {m: [v, v] for m in METRICS}
    rng = np.random.default_rng(seed)
    if arr.size > 20000:  # keep memory bounded: an evenly spaced subsample keeps the distribution
        arr = arr[np.linspace(0, arr.size - 1, 20000).astype(int)]
    samples = arr[rng.integers(0, arr.size, size=(resamples, arr.size))]
    stats = {"p50": np.percentile(samples, 50, axis=1), "p90": np.percentile(samples, 90, axis=1),
             "p95": np.percentile(samples, 95, axis=1), "p99": np.percentile(samples, 99, axis=1),
             "mean": samples.mean(axis=1)}
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    return {m: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for m, v in stats.items()}


def compute_stats(times_ms: Sequence[float], batch: int = 1) -> LatencyStats:
    """Summarise raw per-run latencies.

    Args:
        times_ms: per-run latencies in milliseconds (at least one, all finite and >= 0).
        batch: batch size of each run (for throughput).

    Returns:
        The :class:`LatencyStats`.

    Raises:
        US3LError: no timings, or non-finite/negative values (a broken runner or trace).

    Examples:
        >>> s = compute_stats([1.0, 2.0, 3.0, 4.0], batch=2)
        >>> s.p50_ms, s.mean_ms, s.throughput
        (2.5, 2.5, 800.0)
    """
    arr = np.asarray(list(times_ms), dtype=np.float64)
    if arr.size == 0:
        raise US3LError("no timed runs to summarise; increase --duration or --iterations")
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise US3LError("timings contain negative or non-finite values; the runner's trace is broken")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(arr, [50, 90, 95, 99]))
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    body = arr[arr <= p99]
    body_mean = float(body.mean())
    cov_p99 = float(body.std(ddof=1)) / body_mean if body.size > 1 and body_mean > 0 else 0.0
    return LatencyStats(
        n=int(arr.size), p50_ms=p50, p90_ms=p90, p95_ms=p95, p99_ms=p99, mean_ms=mean, std_ms=std,
        min_ms=float(arr.min()), max_ms=float(arr.max()), cov=std / mean if mean > 0 else 0.0,
        throughput=batch * 1000.0 / mean if mean > 0 else float("inf"), batch=int(batch), ci_ms=bootstrap_ci(arr),
        cov_p99=cov_p99,
    )
