"""``BenchConfig``: the frozen configuration of one ``us3l bench`` run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from us3l.core.errors import ConfigError

from us3l.core.precision import PRECISIONS, Precision  # noqa: F401  (PRECISIONS: re-exported)

from .stats import METRICS



@dataclass(frozen=True)
class BenchConfig:
    """Everything ``us3l bench`` needs; built by the CLI, consumed by :func:`us3l.benchmarks.run_bench`.

    Attributes:
        checkpoint / arch / artifact: the model (a checkpoint, an architecture for latency planning,
            or a switchable ONNX file from ``us3l export --switchable``, measured at the widths it holds).
        device / devices_file: built-in device or TOML profile name, and an explicit profiles file.
        widths: width list or range text (``None``: 0.25:1.0:0.25 plus the checkpoint's BN-bank widths
            plus the widths in its accuracy table).
        batches: batch sizes; runner / threads: ``None`` = the device's defaults.
        precision: one precision or a list ``"fp32,int8"``: every (width, precision) pair is measured
            (``None`` = the device's precision).
        duration_s / iterations / warmup_ms / rounds / idle_gap_ms: timing methodology.
        budget_ms / metric: latency budget and the statistic it applies to.
        search / search_step: bisect the continuous width range (grid step for distinct configs).
        accuracy: accuracy table (default: ``accuracy.json`` beside the checkpoint).
        power_modes: nvpmodel modes to measure (Jetson; ``()`` = current mode only).
        remeasure: with a budget, how many times the chosen pair and the next candidate are
            re-measured when their confidence intervals straddle the budget (0: only report it).
        accept_new_host_key: allow first ssh contact (``StrictHostKeyChecking=accept-new``).
        force: re-export and re-measure even when cached.
        out_dir: reports and artifacts (``None``: ``./us3l-bench`` with the LUT in the user cache).
        lut: explicit lookup-table file; snap: channel divisor; plot: write the PNG.
        max_cov / max_tail: a row whose coefficient of variation or p95/p50 exceeds these is
            re-measured once, and marks the run unstable if it stays noisy
            (:mod:`us3l.benchmarks.stability`).
        outputs: what is exported and timed: ``features``, ``logits`` or ``probs`` (``None``: logits
            for a task checkpoint, features otherwise).
        measure_accuracy: evaluate every timed file that the accuracy table has no row for, on the
            checkpoint's data, before timing (rows merged into the table).
    """

    checkpoint: Path | None = None
    arch: str | None = None
    artifact: Path | None = None
    device: str = "cpu"
    devices_file: Path | None = None
    widths: str | None = None
    batches: tuple[int, ...] = (1,)
    runner: str | None = None
    precision: str | None = None
    threads: int | None = None
    duration_s: float = 1.0
    iterations: int | None = None
    warmup_ms: float = 200.0
    rounds: int = 5
    idle_gap_ms: float = 0.0
    budget_ms: float | None = None
    metric: str = "p95"
    search: bool = False
    search_step: float = 0.005
    accuracy: Path | None = None
    power_modes: tuple[int, ...] = ()
    remeasure: int = 2
    accept_new_host_key: bool = False
    force: bool = False
    out_dir: Path | None = None
    lut: Path | None = None
    snap: int = 8
    plot: bool = True
    max_cov: float = 0.5
    max_tail: float = 2.0
    outputs: str | None = None
    measure_accuracy: bool = False

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.checkpoint, self.arch, self.artifact)) != 1:
            raise ConfigError("give exactly one of a checkpoint path, --arch NAME or a switchable .onnx file")
        if self.artifact is not None and self.search:
            raise ConfigError("--search bisects a checkpoint's continuous width range; a switchable file holds only "
                              "its widths: drop --search (the budget still chooses among them)")
        if self.artifact is not None and self.snap != 8:
            raise ConfigError("--snap applies when exporting; a switchable file's channels are fixed: drop --snap")
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be >= 1, got {list(self.batches)}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric {self.metric!r} is invalid; valid: {', '.join(METRICS)}")
        if self.precision is not None:
            Precision.parse_list(self.precision, "precision")
        from us3l.core.checks import check_number

        check_number("--remeasure", self.remeasure, minimum=0, integer=True)
        check_number("--budget-ms", self.budget_ms, minimum=0, exclusive=True)
        check_number("--duration", self.duration_s, minimum=0, exclusive=True, maximum=24 * 3600)
        check_number("--iterations", self.iterations, minimum=1, integer=True)
        check_number("--warmup-ms", self.warmup_ms, minimum=0, maximum=3600e3)
        check_number("--rounds", self.rounds, minimum=1, integer=True)
        check_number("--idle-gap-ms", self.idle_gap_ms, minimum=0, maximum=3600e3)
        check_number("--search-step", self.search_step, minimum=0, exclusive=True)
        if self.outputs is not None and self.outputs not in ("features", "logits", "probs"):
            raise ConfigError(f"--outputs {self.outputs!r} is invalid; valid: features, logits, probs")
        if self.snap not in (8, 16, 32):
            raise ConfigError(f"--snap {self.snap} is not supported; valid: 8, 16, 32")
        if self.search and self.budget_ms is None:
            raise ConfigError("--search needs --budget-ms")
        from us3l.core.threads import check_threads

        check_threads(self.threads)
        check_number("--max-cov", self.max_cov, minimum=0, exclusive=True)
        check_number("--max-tail", self.max_tail, minimum=1, exclusive=True)
        if not 0 < self.search_step <= 0.25:
            raise ConfigError(f"search step must be in (0, 0.25], got {self.search_step}")
        if self.search and len(self.precisions or ()) > 1:
            raise ConfigError("--search bisects widths at one precision; give one --precision with --search")

    @property
    def precisions(self) -> tuple[Precision, ...] | None:
        """The requested precisions in order (``None``: the device's)."""
        if self.precision is None:
            return None
        return Precision.parse_list(self.precision, "precision")


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``.

    Raises:
        ConfigError: not a comma-separated list of positive integers.
    """
    try:
        values = tuple(dict.fromkeys(int(p) for p in str(text).split(",") if p.strip()))
    except ValueError:
        raise ConfigError(f"--batch {text!r} is invalid; valid: positive integers like '1,8,32'") from None
    if not values or min(values) < 1:
        raise ConfigError(f"--batch {text!r} is invalid; valid: positive integers like '1,8,32'")
    return values


def parse_modes(text: str | None) -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; empty -> ``()``.

    Raises:
        ConfigError: not a comma-separated list of integers.
    """
    if not text:
        return ()
    try:
        return tuple(dict.fromkeys(int(p) for p in text.split(",") if p.strip()))
    except ValueError:
        raise ConfigError(f"--power-modes {text!r} is invalid; valid: nvpmodel ids like '0,1,2'") from None
