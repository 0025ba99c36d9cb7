"""Typed results of the Python API (what the CLI renders as tables and JSON).

Plain frozen dataclasses with no torch import; each has a ``from_*`` constructor that reads the
JSON-like records the rooms produce (``metrics.jsonl``, evaluation rows, ``report.json``), so the
files on disk and the objects in memory always say the same thing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError
from ..core.width import format_width

LATENCY_METRICS = ("p50", "p90", "p95", "p99", "mean")


@dataclass(frozen=True)
class WidthInfo:
    """The network at one width: per-layer channels, stage channels, cost, and alias.

    Attributes:
        width: the width (rounded to 6 decimals).
        channels: output channels of every slimmable layer (``{layer name: count}``).
        stages: the distinct stage widths, in network order (e.g. ``[24, 48, 88, 176]``).
        macs / params: multiply-accumulates for one image and parameter count of the static slice.
        feature_dim: size of the feature vector the backbone returns at this width.
        alias_of: the narrower listed width that slices to the identical network, else ``None``.
    """

    width: float
    channels: dict[str, int]
    stages: list[int]
    macs: int
    params: int
    feature_dim: int
    alias_of: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CollapseScore:
    """The collapse detector's reading for one width at the end of an epoch."""

    width: float
    std_ratio: float  # std of the normalised embedding x sqrt(d): ~1 healthy, ~0 collapsed
    eff_rank: float
    collapsed: bool


@dataclass(frozen=True)
class TrainResult:
    """What :func:`us3l.train` produced.

    Attributes:
        checkpoint: the checkpoint file (``OUT/checkpoint.pt``).
        metrics: the per-epoch log (``OUT/metrics.jsonl``); ``history`` holds its records.
        epochs: epochs completed (including resumed ones).
        seconds: training time summed over all epochs (every invocation of a resumed run).
        start_epoch: epochs the checkpoint held when this invocation started (0 for a new run;
            ``== epochs`` when the run was already complete and nothing was trained).
        run_seconds: training time of this invocation's epochs alone.
        loss / distill_loss: last epoch's mean loss of the max width and of the sub-widths.
        images_per_s: last epoch's throughput.
        collapse: last epoch's collapse scores per monitored width.
    """

    checkpoint: Path
    metrics: Path
    epochs: int
    seconds: float
    loss: float | None
    distill_loss: float | None
    images_per_s: float | None
    collapse: tuple[CollapseScore, ...]
    history: tuple[dict[str, Any], ...] = field(repr=False)
    start_epoch: int = 0
    run_seconds: float | None = None

    @property
    def trained_epochs(self) -> int:
        """Epochs trained by this invocation."""
        return max(0, self.epochs - self.start_epoch)

    @classmethod
    def from_run(cls, checkpoint: Path, start_epoch: int = 0) -> TrainResult:
        """Read ``metrics.jsonl`` beside ``checkpoint`` (written by the trainer, one record per epoch);
        ``start_epoch``: where this invocation started (its epochs are the later records)."""
        metrics = checkpoint.parent / "metrics.jsonl"
        records: list[dict[str, Any]] = []
        if metrics.is_file():
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        last = records[-1] if records else {}
        collapse = tuple(CollapseScore(float(s["width"]), float(s["std_ratio"]), float(s["eff_rank"]), bool(s["collapsed"]))
                         for s in last.get("collapse", []))
        return cls(checkpoint=checkpoint, metrics=metrics, epochs=int(last.get("epoch", 0)),
                   seconds=float(sum(r.get("epoch_time_s", 0.0) for r in records)),
                   loss=last.get("loss_base"), distill_loss=last.get("loss_distill"),
                   images_per_s=last.get("images_per_s"), collapse=collapse, history=tuple(records),
                   start_epoch=int(start_epoch),
                   run_seconds=float(sum(r.get("epoch_time_s", 0.0) for r in records
                                         if int(r.get("epoch", 0)) > start_epoch)))

    @property
    def collapsed(self) -> bool:
        """True when any monitored width collapsed in the last epoch."""
        return any(s.collapsed for s in self.collapse)


@dataclass(frozen=True)
class WidthAccuracy:
    """Accuracy of one width at one precision (fractions in [0, 1]; ``None`` when that protocol was
    not run). ``source`` is ``pytorch`` or ``artifact`` (then ``artifact`` names the file);
    ``top1`` is a classifier artifact's own top-1. ``calib_images`` and ``knn_k`` are the BN
    calibration images and kNN neighbours actually used (fewer than asked on a small set). ``head``
    is the per-width head a fine-tuned width was measured with (None: a shared head or no head)."""

    width: float
    feature_dim: int
    knn: float | None = None
    linear: float | None = None
    precision: str = "fp32"
    top1: float | None = None
    source: str | None = None
    artifact: str | None = None
    calib_images: int | None = None
    knn_k: int | None = None
    outputs: str | None = None  # features, logits or probs: what the measured network returns
    sha256: str | None = None  # the measured file's sha256, or the checkpoint state's for PyTorch rows
    head: str | None = None  # finetune with per-width heads: the width whose head measured the row

    def to_dict(self) -> dict[str, Any]:
        """The row as ``us3l eval --json`` prints it: keys of protocols that were not run are left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class EvalResult:
    """What :func:`us3l.evaluate` measured.

    Attributes:
        checkpoint: the evaluated checkpoint file; ``checkpoint_hash`` its content hash.
        accuracy_file: ``accuracy.json`` beside it (read by ``bench`` for the accuracy join).
        dataset: the dataset name; ``protocol`` the full evaluation protocol as stored in the file.
        results: one :class:`WidthAccuracy` per evaluated width, narrowest first.
    """

    checkpoint: Path
    checkpoint_hash: str
    accuracy_file: Path
    dataset: str
    protocol: dict[str, Any]
    results: tuple[WidthAccuracy, ...]
    classifier: Path | None = None  # the linear probes as a usable task checkpoint (method linear/both)

    @classmethod
    def from_rows(cls, checkpoint: Path, checkpoint_hash: str, accuracy_file: Path, protocol: dict[str, Any],
                  rows: Sequence[dict[str, Any]]) -> EvalResult:
        results = tuple(WidthAccuracy(float(r["width"]), int(r["feature_dim"]), r.get("knn"), r.get("linear"),
                                      str(r.get("precision") or "fp32"), r.get("top1"), r.get("source"), r.get("artifact"),
                                      r.get("calib_images"), r.get("knn_k"), r.get("outputs"), r.get("sha256"))
                        for r in rows)
        return cls(checkpoint, checkpoint_hash, accuracy_file, str(protocol.get("dataset", {}).get("name", "")),
                   protocol, tuple(sorted(results, key=lambda r: (r.width, r.precision))))

    @property
    def metrics(self) -> list[str]:
        """The protocols that were run (``knn``, ``linear``, ``top1``)."""
        return [m for m in ("knn", "linear", "top1") if any(getattr(r, m) is not None for r in self.results)]

    def accuracy(self, width: float, metric: str | None = None, precision: str = "fp32") -> float:
        """Accuracy of ``width`` at ``precision`` under ``metric`` (default: top-1 if it was run, else
        linear if it was run, else kNN).

        Raises:
            ConfigError: the width or the metric was not evaluated.
        """
        metric = metric or next((m for m in ("top1", "linear") if m in self.metrics), "knn")
        for r in self.results:
            if abs(r.width - width) < 1e-9 and r.precision == precision and getattr(r, metric, None) is not None:
                return float(getattr(r, metric))
        raise ConfigError(f"no {metric} accuracy for width {format_width(width)}; evaluated: "
                          f"{', '.join(format_width(r.width) for r in self.results)} with {', '.join(self.metrics)}")

    def to_rows(self) -> list[dict[str, Any]]:
        """JSON rows as ``us3l eval --json`` prints them."""
        return [r.to_dict() for r in self.results]


@dataclass(frozen=True)
class LatencyRow:
    """One measured point: a width at a batch size (and power mode) on the device.

    Latencies are milliseconds per batch; ``throughput`` is images per second. ``accuracy`` comes
    from the accuracy join (``None`` without an accuracy table); ``aliases`` are the widths served
    by the same artifact; ``cached`` marks a point read from the lookup table.
    """

    width: float
    batch: int
    p50_ms: float | None
    p90_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    std_ms: float | None
    throughput: float | None
    macs: int | None = None
    params: int | None = None
    accuracy: float | None = None
    aliases: tuple[float, ...] = ()
    power_mode: int | None = None
    energy_mj: float | None = None
    cached: bool = False
    precision: str = "fp32"
    accuracy_source: str | None = None  # "measured", "unknown" (no row at this precision), None (no table)
    cov: float | None = None
    ci_ms: tuple[float, float] | None = None  # 95 % bootstrap interval of the run's budget metric
    artifact: str | None = None
    sha256: str | None = None  # the timed file's
    outputs: str | None = None  # features, logits or probs
    accuracy_protocol: str | None = None  # top1, linear or knn: how the accuracy of this very file was measured

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> LatencyRow:
        return cls(width=float(r["width"]), batch=int(r["batch"]), p50_ms=r.get("p50_ms"), p90_ms=r.get("p90_ms"),
                   p95_ms=r.get("p95_ms"), p99_ms=r.get("p99_ms"), mean_ms=r.get("mean_ms"), std_ms=r.get("std_ms"),
                   throughput=r.get("throughput"), macs=r.get("macs"), params=r.get("params"), accuracy=r.get("accuracy"),
                   aliases=tuple(float(a) for a in r.get("aliases") or ()), power_mode=r.get("power_mode"),
                   energy_mj=r.get("energy_mj"), cached=bool(r.get("cached")), precision=str(r.get("precision") or "fp32"),
                   accuracy_source=r.get("accuracy_source"), cov=r.get("cov"),
                   ci_ms=(float(r["ci_low_ms"]), float(r["ci_high_ms"])) if r.get("ci_low_ms") is not None else None,
                   artifact=r.get("artifact"), sha256=r.get("sha256"), outputs=r.get("outputs"),
                   accuracy_protocol=r.get("accuracy_protocol"))

    def latency(self, metric: str = "p95") -> float | None:
        """The latency statistic ``metric`` (p50, p90, p95, p99 or mean) in ms."""
        if metric not in LATENCY_METRICS:
            raise ConfigError(f"metric {metric!r} is invalid; valid: {', '.join(LATENCY_METRICS)}")
        return getattr(self, f"{metric}_ms")


@dataclass(frozen=True)
class Choice:
    """The (width, precision) pair chosen for a latency budget; ``artifact`` is the file to deploy;
    ``noise`` says when the choice is within measurement noise (else ``None``)."""

    width: float
    latency_ms: float
    metric: str
    budget_ms: float
    accuracy: float | None
    aliases: tuple[float, ...]
    reason: str
    precision: str = "fp32"
    artifact: str | None = None
    noise: str | None = None


@dataclass(frozen=True)
class BenchResult:
    """What :func:`us3l.bench` measured and chose.

    Attributes:
        device / runner / precision / threads: where and how it was measured.
        results: one :class:`LatencyRow` per width x batch (x power mode).
        pareto_widths: widths on the accuracy/latency Pareto front (first batch size).
        chosen: the choice for ``budget_ms`` (``None`` without a budget or when nothing fits;
            ``reason`` then says why and names the fastest width).
        accuracy_note: why an accuracy table was not joined (measured on another checkpoint, or
            for other channel counts than ``--snap``), else ``None``.
        report / files: the full ``report.json`` content and the files written
            (``report``, ``csv``, ``plot``).
        unstable / stability_note: rows stayed noisy after a re-measurement (the machine looked
            busy; the choice is marked unstable), and the one line saying how noisy.
    """

    device: str
    runner: str
    precision: str
    threads: int | None
    results: tuple[LatencyRow, ...]
    pareto_widths: tuple[float, ...]
    budget_ms: float | None
    metric: str
    chosen: Choice | None
    reason: str | None
    accuracy_note: str | None
    report: dict[str, Any] = field(repr=False)
    files: dict[str, Path] = field(default_factory=dict)
    unstable: bool = False
    stability_note: str | None = None

    @classmethod
    def from_report(cls, report: dict[str, Any], files: dict[str, Path]) -> BenchResult:
        choice = report.get("choice") or {}
        chosen = report.get("chosen")
        metric = report["config"]["metric"]
        budget = report["config"].get("budget_ms")
        pick = None
        if chosen:
            pick = Choice(float(chosen["width"]), float(chosen["latency_ms"]), metric, float(budget),
                          chosen.get("accuracy"), tuple(float(a) for a in chosen.get("aliases") or ()),
                          str(choice.get("reason", "")), str(chosen.get("precision") or "fp32"), chosen.get("artifact"),
                          (choice.get("noise") or {}).get("message"))
        return cls(device=report["device"], runner=report["runner"], precision=report["precision"],
                   threads=report.get("threads"), results=tuple(LatencyRow.from_record(r) for r in report["results"]),
                   pareto_widths=tuple(float(w) for w in report.get("pareto_widths", [])), budget_ms=budget,
                   metric=metric, chosen=pick, reason=choice.get("reason"), accuracy_note=report.get("accuracy_note"),
                   report=report, files=dict(files), unstable=bool(report.get("unstable")),
                   stability_note=(report.get("stability") or {}).get("message"))

    def latency(self, width: float, metric: str | None = None, batch: int | None = None) -> float | None:
        """Measured ``metric`` latency (default: the run's metric) of ``width`` at ``batch`` (default: the first).

        Raises:
            ConfigError: the width was not measured at that batch size.
        """
        batch = batch if batch is not None else self.report["config"]["batches"][0]
        for r in self.results:
            if r.batch == batch and r.power_mode == self.results[0].power_mode and \
                    (abs(r.width - width) < 1e-9 or any(abs(a - width) < 1e-9 for a in r.aliases)):
                return r.latency(metric or self.metric)
        raise ConfigError(f"width {format_width(width)} was not measured at batch {batch}; measured: "
                          f"{', '.join(format_width(r.width) for r in self.results if r.batch == batch)}")
