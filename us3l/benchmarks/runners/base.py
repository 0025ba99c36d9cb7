"""Runner base classes, the timing loop and the runner registry.

A runner owns one artifact (one width) on one backend and follows a context-manager lifecycle
(``with runner: ...`` calls ``_activate`` / ``_deactivate``). :class:`LocalRunner` backends
implement only ``_activate``, ``_infer`` and ``_deactivate``; the public :meth:`LocalRunner.infer`
validates the feed first, and :meth:`Runner.measure` runs the methodology: a time-based warm-up
the first time an input shape is seen, then timed runs for a fixed duration or iteration count,
with the device synchronised inside ``_infer`` (so inside the timed region). Remote runners time
on the device and override :meth:`Runner.measure` (and :meth:`Runner.sweep` to batch work).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from us3l.core.errors import ConfigError, US3LError

from ..artifacts import BenchArtifact

log = logging.getLogger(__name__)

StepCallback = Callable[[str], None]
Point = tuple[int, int]  # (artifact index, batch)


@dataclass
class SweepResult:
    """Raw results of a sweep.

    Attributes:
        times: ``{(artifact index, batch): raw per-run latencies in ms}``.
        extras: ``{(artifact index, batch): {name: values}}`` side measurements per round
            (e.g. ``power_mw`` from tegrastats, ``compute_ms`` from trtexec, ``fallback`` summaries).
        environment: facts about the target gathered while measuring.
    """

    times: dict[Point, list[float]] = field(default_factory=dict)
    extras: dict[Point, dict[str, list]] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TimingConfig:
    """How long and how to time each (width, batch) point.

    Attributes:
        warmup_ms: time-based warm-up the first time a runner sees an input shape.
        duration_s: timed seconds per (width, batch), split evenly over ``rounds``; ignored when
            ``iterations`` is set.
        iterations: fixed number of timed runs per (width, batch), split over ``rounds``.
        rounds: interleaved rounds across widths (resists thermal/frequency drift).
        rewarm_ms: short re-warm at the start of each later round (caches go cold in between).
        idle_gap_ms: sleep between runs (outside the timed region): duty-cycle latency mode.
        min_runs: minimum timed runs per round whatever the duration.
    """

    warmup_ms: float = 200.0
    duration_s: float = 1.0
    iterations: int | None = None
    rounds: int = 5
    rewarm_ms: float = 20.0
    idle_gap_ms: float = 0.0
    min_runs: int = 3

    def __post_init__(self) -> None:
        if self.warmup_ms < 0 or self.rewarm_ms < 0 or self.idle_gap_ms < 0:
            raise ConfigError("warm-up, re-warm and idle gap must be >= 0 ms")
        if self.duration_s <= 0 and not self.iterations:
            raise ConfigError(f"duration must be > 0 s, got {self.duration_s}; or give --iterations")
        if self.iterations is not None and self.iterations < 1:
            raise ConfigError(f"iterations must be >= 1, got {self.iterations}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")

    def round_seconds(self) -> float:
        """Timed seconds of one round."""
        return self.duration_s / self.rounds

    def round_iterations(self) -> int | None:
        """Timed runs of one round (``None`` = time-based)."""
        return None if self.iterations is None else max(1, math.ceil(self.iterations / self.rounds))


@dataclass(frozen=True)
class RunnerOptions:
    """Backend settings shared by every width of a sweep.

    Attributes:
        device: ``"cpu"`` or ``"cuda"`` for local runners (remote runners use ``executor``).
        precision: ``fp32`` / ``fp16`` / ``int8``.
        threads: intra-op threads (``None`` = backend default).
        executor: a :class:`us3l.benchmarks.remote.executor.Executor` for runners that run commands
            (trtexec, the remote agent); ``None`` for in-process runners.
        extra: backend-specific settings (e.g. ``trtexec`` path, ``trt_version``, ``python``).
    """

    device: str = "cpu"
    precision: str = "fp32"
    threads: int | None = None
    executor: Any = None
    extra: dict = field(default_factory=dict)


class Runner(ABC):
    """One artifact on one backend, with a context-manager lifecycle."""

    name: ClassVar[str] = ""

    def __init__(self, artifact: BenchArtifact, options: RunnerOptions | None = None) -> None:
        self.artifact = artifact
        self.options = options or RunnerOptions()
        self.is_active = False
        self._warmed: set[int] = set()
        self.extras: dict[int, dict[str, list]] = {}  # batch -> side measurements, appended per round

    def add_extra(self, batch: int, name: str, value: Any) -> None:
        """Record a side measurement of the current round (power, GPU compute time...)."""
        self.extras.setdefault(batch, {}).setdefault(name, []).append(value)

    @classmethod
    def check_available(cls, options: RunnerOptions) -> None:
        """Raise :class:`BackendUnavailableError` early (before any export) if the backend is missing."""

    @classmethod
    def environment(cls, options: RunnerOptions) -> dict:
        """Facts about where this runner measures (versions, host); part of the device fingerprint."""
        from ..environment import local_environment

        return local_environment(cls.name)

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def activate(self) -> None:
        """Load the artifact (session, engine, module...)."""
        if self.is_active:
            return
        self._activate()
        self.is_active = True

    def deactivate(self) -> None:
        """Release everything ``activate`` acquired."""
        if self.is_active:
            try:
                self._deactivate()
            finally:
                self.is_active = False

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _deactivate(self) -> None: ...

    @abstractmethod
    def measure(self, batch: int, timing: TimingConfig) -> list[float]:
        """One round of timed runs at ``batch``; raw per-run latencies in ms."""

    @classmethod
    def sweep(cls, artifacts: Sequence[BenchArtifact], batches: Sequence[int], timing: TimingConfig,
              options: RunnerOptions, on_step: StepCallback | None = None) -> SweepResult:
        """Measure every artifact at every batch in interleaved rounds.

        Round ``r`` visits the widths in an order rotated by ``r`` so no width always runs
        first (or right after the widest); raw timings of all rounds are concatenated.

        Returns:
            The :class:`SweepResult` (raw times per (artifact index, batch) and side measurements).
        """
        result = SweepResult(times={(i, b): [] for i in range(len(artifacts)) for b in batches})
        with contextlib.ExitStack() as stack:
            runners = []
            for art in artifacts:  # each artifact runs at its own precision (one sweep over every pair)
                runner = cls(art, dataclasses.replace(options, precision=art.precision))
                stack.enter_context(runner)
                runners.append(runner)
            n = len(runners)
            for r in range(timing.rounds):
                order = [(r + k) % n for k in range(n)]
                for batch in batches:
                    for i in order:
                        result.times[(i, batch)].extend(runners[i].measure(batch, timing))
                        if on_step:
                            on_step(f"round {r + 1}/{timing.rounds}")
            for i, runner in enumerate(runners):
                for batch, extra in runner.extras.items():
                    result.extras[(i, batch)] = extra
        return result


class LocalRunner(Runner):
    """An in-process runner timed by :meth:`measure`'s loop around ``_infer``."""

    def __init__(self, artifact: BenchArtifact, options: RunnerOptions | None = None) -> None:
        super().__init__(artifact, options)
        self._feeds: dict[int, Any] = {}

    @abstractmethod
    def input_specs(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        """``{input name: (shape with None for dynamic dims, numpy dtype)}`` of the active artifact."""

    @abstractmethod
    def _to_native(self, feed: dict[str, np.ndarray]) -> Any:
        """Convert a validated numpy feed to what ``_infer`` takes (done once, outside timing)."""

    @abstractmethod
    def _infer(self, native_feed: Any) -> Any:
        """Run once and synchronise the device before returning."""

    def make_feed(self, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A random feed of the right names, dtypes and shapes at ``batch``."""
        rng = np.random.default_rng(seed)
        feed = {}
        for name, (shape, dtype) in self.input_specs().items():
            if name == "width_index" and self.artifact.width_index is not None:  # a switchable file's width
                feed[name] = np.asarray(self.artifact.width_index, dtype=dtype).reshape([1] * len(shape))
                continue
            dims = [batch if i == 0 else (d or self.artifact.input_shape[i]) for i, d in enumerate(shape)]
            feed[name] = rng.standard_normal(dims).astype(dtype)
        return feed

    def infer(self, feed: dict[str, np.ndarray]) -> Any:
        """Validate names, dtypes and shapes of ``feed``, then run once.

        Raises:
            US3LError: inactive runner, missing/unexpected inputs, wrong dtype or shape.
        """
        if not self.is_active:
            raise US3LError(f"{self.name} runner is not active; use it as a context manager")
        specs = self.input_specs()
        if set(feed) != set(specs):
            raise US3LError(f"inputs {sorted(feed)} do not match the model's inputs {sorted(specs)}")
        for name, (shape, dtype) in specs.items():
            arr = feed[name]
            if arr.dtype != dtype:
                raise US3LError(f"input {name!r} has dtype {arr.dtype}; the model expects {np.dtype(dtype)}")
            ok = len(arr.shape) == len(shape) and all(d is None or d == a for d, a in zip(shape, arr.shape))
            if not ok:
                want = "x".join("?" if d is None else str(d) for d in shape)
                raise US3LError(f"input {name!r} has shape {tuple(arr.shape)}; the model expects {want}")
        return self._infer(self._to_native(feed))

    def native_feed(self, batch: int) -> Any:
        """The validated, backend-native random feed at ``batch`` (built once, outside timing)."""
        if batch not in self._feeds:
            feed = self.make_feed(batch)
            self.infer(feed)  # validation and the very first (slow) run, outside any timing
            self._feeds[batch] = self._to_native(feed)
        return self._feeds[batch]

    def _spin(self, feed: Any, ms: float) -> None:
        deadline = time.perf_counter() + ms / 1e3
        infer = self._infer
        while time.perf_counter() < deadline:
            infer(feed)

    def measure(self, batch: int, timing: TimingConfig) -> list[float]:
        """One round: warm up (full the first time this shape is seen), then time runs."""
        feed = self.native_feed(batch)
        self._spin(feed, timing.warmup_ms if batch not in self._warmed else timing.rewarm_ms)
        self._warmed.add(batch)
        infer, clock, gap = self._infer, time.perf_counter, timing.idle_gap_ms / 1e3
        n_target, min_runs = timing.round_iterations(), timing.min_runs
        deadline = clock() + timing.round_seconds()
        times: list[float] = []
        while True:
            t0 = clock()
            infer(feed)
            t1 = clock()
            times.append((t1 - t0) * 1e3)
            if n_target is not None:
                if len(times) >= n_target:
                    break
            elif t1 >= deadline and len(times) >= min_runs:
                break
            if gap:
                time.sleep(gap)
        return times
