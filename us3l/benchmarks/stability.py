"""A busy machine, said out loud: rows whose latency spread says the machine was not quiet.

A narrow bootstrap interval does not mean a trustworthy point: on a shared CPU the p50 can be
0.3 ms while the p95 is 17 ms (a coefficient of variation of 300 %), because other processes
take the cores for whole scheduler slices. Such a point describes the machine's load, not the
network, and a choice made on it is the load's choice.

:func:`noisy_rows` finds rows whose CoV (over the runs up to the p99) exceeds :data:`MAX_COV` or whose p95/p50 exceeds
:data:`MAX_TAIL` (with at least :data:`MIN_RUNS` timed runs, fewer say nothing about the tail).
``us3l bench`` re-measures those rows once; what stays noisy is reported as :class:`Stability`:
one line saying the machine looks busy and how noisy it was, ``report.json``'s ``stability``
entry, the choice marked ``unstable``, and with ``--strict`` a non-zero exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from us3l.core.width import format_width

#: coefficient of variation (std / mean) above which a row counts as noisy
MAX_COV = 0.5
#: p95 / p50 above which a row counts as noisy (a quiet CPU measures 1.1-1.5 on these networks)
MAX_TAIL = 2.0
#: fewer timed runs than this say nothing reliable about the spread (e.g. ``--iterations 3``)
MIN_RUNS = 20


def spread(row: Any) -> tuple[float | None, float | None]:
    """``(CoV, p95/p50)`` of a row (a :class:`~us3l.benchmarks.rows.BenchRow` or its dict). The CoV
    is ``cov_p99``, over the runs up to the p99, where the row has it: a handful of isolated
    spikes (a quiet shared VM gives some) says nothing about the load the p50 and p95 were taken
    under, while a busy machine slows far more than 1 % of the runs. Older points (and trtexec
    summaries) have only ``cov``."""
    get = row.get if isinstance(row, dict) else (lambda k: getattr(row, k, None))
    cov, p50, p95 = get("cov_p99"), get("p50_ms"), get("p95_ms")
    if cov is None:
        cov = get("cov")
    tail = p95 / p50 if p50 and p95 is not None and p50 > 0 else None
    return (float(cov) if cov is not None else None), tail


def is_noisy(row: Any, max_cov: float = MAX_COV, max_tail: float = MAX_TAIL) -> bool:
    """Whether ``row``'s spread exceeds either limit (rows of fewer than :data:`MIN_RUNS` runs never are)."""
    n = row.get("n") if isinstance(row, dict) else getattr(row, "n", None)
    if n is None or n < MIN_RUNS:
        return False
    cov, tail = spread(row)
    return (cov is not None and cov > max_cov) or (tail is not None and tail > max_tail)


def noisy_rows(rows: list[Any], max_cov: float = MAX_COV, max_tail: float = MAX_TAIL) -> list[int]:
    """Indices of the noisy rows."""
    return [i for i, r in enumerate(rows) if is_noisy(r, max_cov, max_tail)]


@dataclass
class Stability:
    """What the noise check found.

    Attributes:
        limits: the thresholds (``max_cov``, ``max_p95_over_p50``, ``min_runs``).
        remeasured: rows that were noisy and measured again (width, precision, batch, first spread).
        unstable: rows still noisy after that (width, precision, batch, spread).
        message: the one line, when something stayed noisy.
    """

    limits: dict[str, float]
    remeasured: list[dict[str, Any]] = field(default_factory=list)
    unstable: list[dict[str, Any]] = field(default_factory=list)
    message: str | None = None

    @property
    def is_unstable(self) -> bool:
        return bool(self.unstable)

    def to_dict(self) -> dict[str, Any]:
        """``report.json``'s ``stability`` entry."""
        out: dict[str, Any] = {"unstable": self.is_unstable, "limits": self.limits, "remeasured": self.remeasured,
                               "noisy_after_remeasure": self.unstable}
        if self.message:
            out["message"] = self.message
        return out


def describe(row: Any) -> dict[str, Any]:
    """The identity and spread of a row, for the report."""
    get = row.get if isinstance(row, dict) else (lambda k: getattr(row, k, None))
    cov, tail = spread(row)
    return {"width": get("width"), "precision": get("precision"), "batch": get("batch"),
            "cov": None if cov is None else round(cov, 3), "p95_over_p50": None if tail is None else round(tail, 2),
            "p50_ms": get("p50_ms"), "p95_ms": get("p95_ms"), "n": get("n")}


def busy_message(unstable: list[dict[str, Any]], total: int, has_choice: bool) -> str:
    """One line: the machine looks busy, how noisy it was, what it means and what to do."""
    worst_cov = max((u["cov"] or 0.0) for u in unstable)
    worst_tail = max((u["p95_over_p50"] or 0.0) for u in unstable)
    names = ", ".join(f"{format_width(u['width'])} {u['precision']}" + (f" batch {u['batch']}" if u["batch"] != 1 else "")
                      for u in unstable[:4]) + (", ..." if len(unstable) > 4 else "")
    effect = "the choice is marked unstable" if has_choice else "these latencies describe the load, not the network"
    fresh = [u for u in unstable if not u.get("cached")]
    how = "stayed noisy after a re-measurement" if fresh else "are noisy points from the lookup table (--force re-measures)"
    if fresh and len(fresh) < len(unstable):
        how += " or came noisy from the lookup table"
    return (f"the machine looks busy: {len(unstable)} of {total} measured row(s) {how} (width {names}; CoV up to "
            f"{100 * worst_cov:.0f} %, p95 up to {worst_tail:.1f}x p50); {effect}. Measure again on a quieter machine "
            "(--threads 1 helps on a shared CPU; --strict makes this an error)")
