"""``--search``: bisect the continuous width range with on-device measurement.

The width -> channels map is a step function, so the range is sampled on a fine grid, grouped
into distinct channel configurations and bisected over those groups (each probe exports and
measures one width: the widest width of its group). Latency is assumed monotone in width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError
from us3l.core.width import format_width, round_width

from .artifacts import ModelSource, prepare_artifacts
from .choice import bisect_widest, distinct_configs
from .lut import LatencyTable
from .rows import BenchRow
from .sweep import MeasureContext, ProgressFn, measure_rows

log = logging.getLogger(__name__)


def width_grid(lo: float, hi: float, step: float) -> list[float]:
    """``lo, lo+step, ..., hi`` (``hi`` always included), rounded."""
    n = int((hi - lo) / step + 1e-9)
    grid = [round_width(lo + i * step) for i in range(n + 1)]
    if grid[-1] < round_width(hi):
        grid.append(round_width(hi))
    return grid


@dataclass
class SearchOutcome:
    """What :func:`search_width` found.

    Attributes:
        width: the widest fitting width (``None``: even the narrowest is over budget).
        width_range: ``[lo, hi]`` of the widths sharing its channel configuration.
        configs: number of distinct channel configurations in the range.
        probes: the rows measured (each marked ``searched``); probe_widths: their widths in order.
        reason: one sentence for the report.
    """

    width: float | None
    width_range: list[float] | None
    configs: int
    probes: list[BenchRow]
    probe_widths: list[float]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """``report.json``'s ``search`` entry (the probes are among the report's rows)."""
        return {"configs": self.configs, "probe_widths": self.probe_widths, "width": self.width,
                "width_range": self.width_range, "reason": self.reason}


def search_width(source: ModelSource, ctx: MeasureContext | None, lo: float, hi: float, step: float, batch: int,
                 budget_ms: float, metric: str, out_dir: Path, precision: str, table: LatencyTable | None,
                 progress: ProgressFn | None = None,
                 measure: Callable[[float], BenchRow] | None = None) -> SearchOutcome:
    """Find the widest width whose ``metric`` latency at ``batch`` is within ``budget_ms``.

    Args:
        measure: override ``width -> report row`` (tests); default exports and measures on ``ctx``.

    Returns:
        The :class:`SearchOutcome`.
    """
    from us3l.core.slicing import channel_config  # torch: only a search needs it

    model = source.slimmable()
    from us3l.core.slicing import channel_config  # torch: only when a run searches

    groups = distinct_configs(width_grid(lo, hi, step),
                              lambda w: tuple(channel_config(model, w, source.snap).values()))
    probes: list[BenchRow] = []

    def default_measure(w: float) -> BenchRow:
        assert ctx is not None, "search_width measures on a MeasureContext unless given measure="
        arts = prepare_artifacts(source, [w], out_dir, precision, table)
        return measure_rows(ctx, arts, [batch], progress)[0]

    run = measure or default_measure

    def latency(row: BenchRow) -> float:
        value = row.latency(metric)
        if value is None:
            raise ConfigError(f"the search probe at width {format_width(row.width)} has no {metric} latency "
                              "(trtexec's stdout fallback may lack it); choose another --metric")
        return value

    def fits(i: int) -> bool:
        row = run(groups[i][1]).replace(searched=True)
        probes.append(row)
        log.info("search: width %s -> %s %.3f ms", format_width(groups[i][1]), metric, latency(row))
        return latency(row) <= budget_ms

    index, order = bisect_widest(len(groups), fits)
    probe_widths = [groups[i][1] for i in order]
    if index is None:
        fastest = min(latency(r) for r in probes)
        return SearchOutcome(None, None, len(groups), probes, probe_widths,
                             f"even the narrowest width {format_width(groups[0][1])} takes {fastest:.3f} ms "
                             f"({metric}) > {budget_ms:g} ms")
    return SearchOutcome(groups[index][1], list(groups[index]), len(groups), probes, probe_widths,
                         f"widest width within {metric} <= {budget_ms:g} ms by bisection over {len(groups)} "
                         f"distinct channel configurations ({len(order)} probes)")
