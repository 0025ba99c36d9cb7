"""Latency statistics computed by us from raw per-run timings.

Every runner (local loop, remote agent, trtexec ``--exportTimes``) hands back a list of
per-run latencies in milliseconds; this module is the single place that turns them into
p50/p90/p95/p99, mean, std, coefficient of variation and throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        cov: coefficient of variation ``std / mean`` (a stability diagnostic).
        throughput: samples per second at this batch, ``batch * 1000 / mean_ms``.
        batch: batch size the runs used.
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
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


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
    return LatencyStats(
        n=int(arr.size), p50_ms=p50, p90_ms=p90, p95_ms=p95, p99_ms=p99, mean_ms=mean, std_ms=std,
        min_ms=float(arr.min()), max_ms=float(arr.max()), cov=std / mean if mean > 0 else 0.0,
        throughput=batch * 1000.0 / mean if mean > 0 else float("inf"), batch=int(batch),
    )
