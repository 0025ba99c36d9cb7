"""Typed report rows: one :class:`BenchRow` per (artifact, batch, power mode) measured by ``us3l bench``.

A row is built from the artifact's facts and one latency point (fresh statistics or a cached
lookup-table point), then gains its accuracy and the budget metric's interval while the run is
finished. :meth:`BenchRow.to_dict` is the ``report.json`` form: the :data:`CSV_COLUMNS` first (the
``latency.csv`` header, in that order), then the full interval table ``ci_ms``, then anything a
cached point carried that this version does not know (kept, never dropped).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

CSV_COLUMNS = ("width", "precision", "outputs", "aliases", "channels", "macs", "params", "accuracy", "accuracy_source",
               "accuracy_protocol", "p50_ms",
               "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "cov", "cov_p99", "ci_low_ms", "ci_high_ms",
               "n", "throughput", "batch", "runner", "device", "threads", "power_mode", "power_mw", "energy_mj",
               "gpu_compute_p50_ms", "int8_path", "source", "cached", "remeasured", "artifact", "sha256")
# ci_low_ms / ci_high_ms: the 95 % bootstrap interval of the budget metric (--metric)


@dataclass
class BenchRow:
    """One measured point.

    Attributes:
        width / aliases / precision: the network (aliases: widths with the same channels).
        channels / macs / params: the artifact's facts.
        n / p50_ms ... max_ms / cov / cov_p99 / throughput: latency statistics (``None`` where a stdout
            summary lacks them); ci_ms: ``{metric: [low, high]}``, 95 % bootstrap intervals.
        source: ``raw`` (per-run timings) or ``stdout`` (a summary parsed from trtexec's log).
        gpu_compute_p50_ms / int8_path / power_mw / energy_mj: side measurements, when taken.
        batch / runner / device / threads / power_mode: where and how it was measured.
        artifact / sha256: the timed file. cached: the point came from the lookup table.
        outputs: what the timed network returns (``features``, ``logits``, ``probs``).
        accuracy / accuracy_source / accuracy_protocol: the accuracy measured on this exact file
            (joined by its sha256; ``measured``), or ``unknown`` when the table has no row for it
            (``None``: no table); the protocol it was measured with (``top1``, ``linear``, ``knn``).
        ci_low_ms / ci_high_ms: the interval of the budget metric. remeasured: re-measurement
            attempt that produced this row (noise check). searched: a ``--search`` probe.
        extra: point fields this version does not know (from a newer or older lookup table).
    """

    width: float
    batch: int = 1
    precision: str = "fp32"
    aliases: list[float] = field(default_factory=list)
    channels: dict[str, int] | None = None
    macs: int | None = None
    params: int | None = None
    n: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    cov: float | None = None
    cov_p99: float | None = None
    throughput: float | None = None
    ci_ms: dict[str, list[float]] | None = None
    source: str | None = None
    gpu_compute_p50_ms: float | None = None
    int8_path: str | None = None
    power_mw: float | None = None
    energy_mj: float | None = None
    runner: str | None = None
    device: str | None = None
    artifact: str | None = None
    threads: int | None = None
    power_mode: int | None = None
    sha256: str | None = None
    cached: bool = False
    accuracy: float | None = None
    accuracy_source: str | None = None
    accuracy_protocol: str | None = None
    outputs: str | None = None
    ci_low_ms: float | None = None
    ci_high_ms: float | None = None
    remeasured: int | None = None
    searched: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_point(cls, point: dict[str, Any], **facts: Any) -> BenchRow:
        """A row from a latency point (statistics dict, as the lookup table stores it) and the
        artifact/run ``facts`` (which win over the point's own fields)."""
        known = _FIELDS - {"extra"}
        data = {k: v for k, v in point.items() if k != "measured_at"}
        extra = {k: v for k, v in data.items() if k not in known and k not in facts}
        return cls(**{k: v for k, v in data.items() if k in known and k not in facts}, **facts, extra=extra)

    def latency(self, metric: str) -> float | None:
        """The ``metric`` statistic (``"p95"`` -> :attr:`p95_ms`), or ``None`` if not measured."""
        value = getattr(self, f"{metric}_ms", None)
        return None if value is None else float(value)

    @property
    def point_key(self) -> tuple[float, int, int | None]:
        """``(width, batch, power_mode)``: rows of one run that measure the same point."""
        return (self.width, self.batch, self.power_mode)

    def replace(self, **changes: Any) -> BenchRow:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The ``report.json`` row: :data:`CSV_COLUMNS` in order, then ``ci_ms``, unknown point fields
        and ``searched`` (present on search probes only)."""
        out: dict[str, Any] = {c: getattr(self, c) for c in CSV_COLUMNS}
        if self.ci_ms is not None:
            out["ci_ms"] = self.ci_ms
        out.update({k: v for k, v in self.extra.items() if k not in out})
        if self.searched:
            out["searched"] = True
        return out


_FIELDS = frozenset(f.name for f in dataclasses.fields(BenchRow))
assert set(CSV_COLUMNS) <= _FIELDS, "every CSV column is a BenchRow field"
