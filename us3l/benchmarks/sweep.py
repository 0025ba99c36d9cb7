"""Measure a set of artifacts at every batch, reusing cached lookup-table points.

:func:`measure_rows` looks every (artifact, batch) point up in the lookup table, measures the
missing ones in one interleaved sweep on the runner, turns raw timings into statistics and
returns one :class:`~us3l.benchmarks.rows.BenchRow` per (artifact, batch).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .artifacts import BenchArtifact
from .lut import LatencyTable, point_key
from .rows import BenchRow
from .runners.base import Runner, RunnerOptions, SweepResult, TimingConfig
from .stats import compute_stats
from .tegrastats import energy_per_inference_mj

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class MeasureContext:
    """What every point of one run shares.

    Attributes:
        runner_cls / runner_name: the runner class and its registry name.
        options / timing: backend settings and methodology.
        table / fingerprint: lookup table and the device fingerprint keying it.
        device: device name for the rows; force: ignore cached points.
        power_mode: nvpmodel mode active while measuring (``None`` = not managed).
    """

    runner_cls: type[Runner]
    runner_name: str
    options: RunnerOptions
    timing: TimingConfig
    table: LatencyTable | None
    fingerprint: str
    device: str
    force: bool = False
    power_mode: int | None = None

    def key(self, art: BenchArtifact, batch: int) -> str:
        """Lookup-table key of ``art`` at ``batch`` (the power mode is part of the device state)."""
        fp = self.fingerprint if self.power_mode is None else f"{self.fingerprint}@mode{self.power_mode}"
        key = point_key(fp, self.runner_name, art.sha256, batch, art.precision, self.options.threads)
        # A point is reused only by a run with the same methodology: a quick '--iterations 3' point
        # must not stand in for a careful one. Idle-gap (duty-cycle) latency is another quantity.
        t = self.timing
        effort = f"i{t.iterations}" if t.iterations else f"d{t.duration_s:g}"
        key = f"{key}|{effort}r{t.rounds}w{t.warmup_ms:g}"
        return f"{key}|gap{t.idle_gap_ms:g}" if t.idle_gap_ms else key


def _point(times: list[float], extras: dict, batch: int) -> dict:
    """Statistics (and side measurements) of one point."""
    if times:
        point = compute_stats(times, batch).to_dict()
        point["source"] = "raw"
    elif extras.get("fallback"):
        point = dict(extras["fallback"][-1])
        point["source"] = "stdout"
    else:
        from us3l.core.errors import US3LError

        raise US3LError("the runner returned no timings and no summary")
    compute = [t for chunk in extras.get("compute_ms", []) for t in chunk]
    if compute:
        point["gpu_compute_p50_ms"] = compute_stats(compute, batch).p50_ms
    if extras.get("int8_path"):
        point["int8_path"] = extras["int8_path"][-1]
    power = extras.get("power_mw") or []
    if power:
        point["power_mw"] = statistics.fmean(power)
        point["energy_mj"] = energy_per_inference_mj(point["power_mw"], point["mean_ms"], batch)
    return point


def measure_rows(ctx: MeasureContext, artifacts: Sequence[BenchArtifact], batches: Sequence[int],
                 progress: ProgressFn | None = None) -> list[BenchRow]:
    """One :class:`BenchRow` per (artifact, batch): artifact facts + statistics, cached points reused.

    Returns:
        Rows ordered by artifact then batch, each with ``cached`` telling whether it was reused.
    """
    points: dict[tuple[int, int], tuple[dict, bool]] = {}
    todo: list[int] = []
    for i, art in enumerate(artifacts):
        hits = [None if (ctx.force or ctx.table is None) else ctx.table.get(ctx.key(art, b)) for b in batches]
        found = [h for h in hits if h]
        if len(found) == len(hits):  # every batch of this artifact is cached
            for b, c in zip(batches, found):
                points[(i, b)] = (c, True)
        else:
            todo.append(i)
    if todo:
        total = len(todo) * len(batches) * ctx.timing.rounds
        done = 0

        def step(desc: str) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total, desc)

        subset = [artifacts[i] for i in todo]
        log.info("measuring %d width(s) x %d batch(es) with %s", len(subset), len(batches), ctx.runner_name)
        result: SweepResult = ctx.runner_cls.sweep(subset, batches, ctx.timing, ctx.options, step)
        for j, i in enumerate(todo):
            for b in batches:
                point = _point(result.times.get((j, b), []), result.extras.get((j, b), {}), b)
                points[(i, b)] = (point, False)
                if ctx.table is not None:
                    ctx.table.put(ctx.key(artifacts[i], b), point)
    rows = []
    for i, art in enumerate(artifacts):
        for b in batches:
            point, cached = points[(i, b)]
            rows.append(BenchRow.from_point(
                point, width=art.width, aliases=list(art.aliases), channels=art.channels, macs=art.macs,
                params=art.params, batch=b, runner=ctx.runner_name, device=ctx.device, precision=art.precision,
                artifact=str(art.path) if art.path else None, threads=ctx.options.threads,
                power_mode=ctx.power_mode, sha256=art.sha256, cached=cached, outputs=art.outputs))
    return rows
