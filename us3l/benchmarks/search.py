"""``--search``: bisect the continuous width range with on-device measurement.

The width -> channels map is a step function, so the range is sampled on a fine grid, grouped
into distinct channel configurations and bisected over those groups (each probe exports and
measures one width: the widest width of its group). Latency is assumed monotone in width.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from us3l.core.slicing import channel_config
from us3l.core.width import format_width, round_width

from .artifacts import ModelSource, prepare_artifacts
from .choice import bisect_widest, distinct_configs
from .sweep import MeasureContext, ProgressFn, measure_rows

log = logging.getLogger(__name__)


def width_grid(lo: float, hi: float, step: float) -> list[float]:
    """``lo, lo+step, ..., hi`` (``hi`` always included), rounded."""
    n = int((hi - lo) / step + 1e-9)
    grid = [round_width(lo + i * step) for i in range(n + 1)]
    if grid[-1] < round_width(hi):
        grid.append(round_width(hi))
    return grid


def search_width(source: ModelSource, ctx: MeasureContext, lo: float, hi: float, step: float, batch: int,
                 budget_ms: float, metric: str, out_dir: Path, precision: str, table: object,
                 progress: ProgressFn | None = None,
                 measure: Callable[[float], dict] | None = None) -> dict:
    """Find the widest width whose ``metric`` latency at ``batch`` is within ``budget_ms``.

    Args:
        measure: override ``width -> report row`` (tests); default exports and measures on ``ctx``.

    Returns:
        ``{"width": widest fitting width or None, "width_range": [lo, hi] of its configuration,
        "configs": number of distinct configurations, "probes": [rows measured], "reason"}``.
    """
    model = source.slimmable()
    groups = distinct_configs(width_grid(lo, hi, step),
                              lambda w: tuple(channel_config(model, w, source.snap).values()))
    key = f"{metric}_ms"
    probes: list[dict] = []

    def default_measure(w: float) -> dict:
        arts = prepare_artifacts(source, [w], out_dir, precision, table)
        return measure_rows(ctx, arts, [batch], progress)[0]

    run = measure or default_measure

    def fits(i: int) -> bool:
        row = dict(run(groups[i][1]))
        row["searched"] = True
        probes.append(row)
        log.info("search: width %s -> %s %.3f ms", format_width(groups[i][1]), metric, row[key])
        return row[key] <= budget_ms

    index, order = bisect_widest(len(groups), fits)
    out = {"configs": len(groups), "probes": probes, "probe_widths": [groups[i][1] for i in order]}
    if index is None:
        fastest = min(probes, key=lambda r: r[key])
        return {**out, "width": None, "width_range": None,
                "reason": f"even the narrowest width {format_width(groups[0][1])} takes {fastest[key]:.3f} ms "
                          f"({metric}) > {budget_ms:g} ms"}
    return {**out, "width": groups[index][1], "width_range": list(groups[index]),
            "reason": f"widest width within {metric} <= {budget_ms:g} ms by bisection over {len(groups)} "
                      f"distinct channel configurations ({len(order)} probes)"}
