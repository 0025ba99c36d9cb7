"""CPU threads that hold on a shared machine: the one place that decides how many threads torch and
ONNX Runtime use.

Measured with ``perf/threads.py`` (docs/deployment.md §15.8) on a 2-core machine shared with other
jobs: PyTorch's default (one thread per CPU whose OpenMP threads *spin* while they wait) made
training, fine-tuning and evaluation 4-13x slower than one thread, because the waiting threads
burn the CPU time their partners need. The same number of threads waiting *passively* (sleeping,
``OMP_WAIT_POLICY=PASSIVE``) was the fastest setting or within 1.1x of it, quiet or beside a load,
ahead of one thread (more threads get a larger share of a contended CPU when they do not spin).
So the default, ``threads=0`` ("auto"), is:

- with passive waiting in effect (:func:`passive_waiting`; the ``us3l`` command sets
  ``OMP_WAIT_POLICY=PASSIVE`` before torch is imported, :func:`prefer_passive_waiting`, unless the
  user chose a policy): one thread per usable CPU (:func:`usable_cpus`: the affinity set, capped
  by a cgroup CPU quota, which PyTorch's default ignores);
- where OpenMP spins (torch was imported before anyone asked for passive waiting, e.g. a Python
  program that imported torch first): one thread per CPU that other processes leave idle
  (:func:`busy_elsewhere`, from ``/proc/stat`` minus this process's own CPU time over 0.2 s),
  re-measured in long loops by :class:`AutoThreads` (after :data:`FIRST_RECHECK_S` s, then every
  :data:`RECHECK_S` s), so a spinning team never fights a busy machine.

An explicit ``threads=N`` (``--threads N``) is used as given, and so is ``OMP_NUM_THREADS``.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

AUTO = 0  # the ``threads`` value that means "decide from the machine's load"
PROBE_S = 0.2  # start-up window over which other processes' CPU use is measured
RECHECK_S = 5.0  # how often a long loop re-measures (AutoThreads)
FIRST_RECHECK_S = 2.0  # the first re-measure comes sooner: the start-up probe is short
FREE_MARGIN = 0.3  # a CPU counts as free when others leave at least 1 - FREE_MARGIN of it idle


def threads_help(default_text: str = "auto") -> str:
    """The ``--threads`` help text every computing command shares."""
    return ("CPU threads (torch, ONNX Runtime); 0 = auto: one per CPU other processes leave idle, re-checked in "
            f"long runs; OMP_NUM_THREADS overrides auto.  [default: 0, {default_text}]")


def check_threads(value: int | None, option: str = "--threads") -> None:
    """Raise :class:`~us3l.core.errors.ConfigError` (one line) for a negative thread count."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        from .errors import ConfigError

        raise ConfigError(f"{option} {value!r} is invalid; valid: 0 (auto) or a positive number of threads")


def usable_cpus() -> int:
    """CPUs this process may use: its affinity set, capped by a cgroup v2/v1 CPU quota (containers, CI)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return max(1, cpus)


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup quota (``cpu.max`` or ``cfs_quota_us / cfs_period_us``), None if unlimited."""
    try:
        text = open("/sys/fs/cgroup/cpu.max").read().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class _Sample:
    at: float  # monotonic seconds
    busy: float  # CPU-seconds spent busy on our CPUs, all processes (None-equivalent: -1 when unknown)
    own: float  # CPU-seconds of this process


def _now() -> float:
    return time.monotonic()


def _sample() -> _Sample:
    now = _now()
    times = os.times()
    own = times.user + times.system
    return _Sample(now, _busy_seconds(), own)


def _busy_seconds() -> float:
    """CPU-seconds all processes spent busy since boot on the CPUs this process may use (-1: unknown)."""
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:
        return -1.0
    try:
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return -1.0
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    busy = 0
    found = False
    for line in lines:
        name, _, rest = line.partition(" ")
        if name not in allowed:
            continue
        v = [int(x) for x in rest.split()]
        # user nice system idle iowait irq softirq steal (guest time is already inside user/nice)
        busy += v[0] + v[1] + v[2] + (v[5] if len(v) > 5 else 0) + (v[6] if len(v) > 6 else 0) \
            + (v[7] if len(v) > 7 else 0)
        found = True
    return busy / tick if found else -1.0


def busy_between(a: _Sample, b: _Sample) -> float | None:
    """Mean number of CPUs other processes kept busy between two samples (None: not measurable here)."""
    span = b.at - a.at
    if a.busy < 0 or b.busy < 0 or span <= 0:
        return None
    return max(0.0, ((b.busy - a.busy) - (b.own - a.own)) / span)


def busy_elsewhere(window_s: float = PROBE_S) -> float | None:
    """CPUs kept busy by other processes, measured over ``window_s`` seconds (None: not measurable).

    Where ``/proc/stat`` is missing (not Linux) the 1-minute load average stands in.
    """
    a = _sample()
    if a.busy < 0:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return None
    time.sleep(window_s)
    return busy_between(a, _sample())


def threads_for(busy_other: float | None, cpus: int) -> int:
    """Threads for ``cpus`` usable CPUs of which others keep ``busy_other`` busy: one per free CPU, >= 1."""
    if busy_other is None:
        return cpus
    free = cpus - busy_other
    return max(1, min(cpus, int(math.floor(free + FREE_MARGIN))))


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a positive integer, else None."""
    try:
        value = int(os.environ.get("OMP_NUM_THREADS", "").split(",")[0])
    except ValueError:
        return None
    return value if value > 0 else None


@dataclass(frozen=True)
class ThreadChoice:
    """How many threads, and why (shown with ``--verbose``).

    Attributes:
        threads: the count. auto: re-measured from the load in long loops (spinning OpenMP only).
        reason: where the count came from.
    """

    threads: int
    auto: bool
    reason: str


def choose_threads(requested: int | None = AUTO, probe_s: float = PROBE_S) -> ThreadChoice:
    """The thread count for ``requested`` (``0``/``None``: auto, measured now; ``N``: ``N``)."""
    check_threads(requested)
    if requested:
        return ThreadChoice(int(requested), False, "--threads")
    env = env_threads()
    if env is not None:
        return ThreadChoice(env, False, "OMP_NUM_THREADS")
    cpus = usable_cpus()
    if cpus == 1:
        return ThreadChoice(1, True, "1 usable CPU")
    if passive_waiting():
        return ThreadChoice(cpus, False, f"auto: {cpus} usable CPU(s); idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE)")
    other = busy_elsewhere(probe_s)
    n = threads_for(other, cpus)
    what = "unknown" if other is None else f"{other:.1f}"
    return ThreadChoice(n, True, f"auto: {cpus} CPU(s), {what} busy with other processes (OpenMP spins: fewer threads)")


def set_torch_threads(n: int) -> None:
    """Set torch's intra-op threads (a no-op when unchanged)."""
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


class AutoThreads:
    """torch's thread count for a long loop: chosen at start, re-measured every :data:`RECHECK_S` s.

    Call :meth:`tick` once per step (it reads two small ``/proc`` files at most once per
    ``every`` seconds). With an explicit count it sets that once and never changes it.
    """

    def __init__(self, requested: int | None = AUTO, every: float = RECHECK_S, apply: bool = True) -> None:
        self.choice = choose_threads(requested)
        self.every, self.apply = float(every), apply
        self.threads = self.choice.threads
        self._last = _sample()
        self.changes: list[tuple[float, int, float]] = []  # (time since start, new threads, others' CPUs)
        self._start = self._last.at
        self._checked = False
        if apply:
            set_torch_threads(self.threads)
        log.info("CPU threads: %d (%s)", self.threads, self.choice.reason)

    def tick(self) -> int:
        """Re-measure when due and adjust; returns the thread count in use."""
        if not self.choice.auto:
            return self.threads
        now = _now()
        due = FIRST_RECHECK_S if not self._checked and self.every >= FIRST_RECHECK_S else self.every
        if now - self._last.at < due:
            return self.threads
        self._checked = True
        sample = _sample()
        other = busy_between(self._last, sample)
        self._last = sample
        n = threads_for(other, usable_cpus())
        if n != self.threads and other is not None:
            log.info("CPU threads: %d -> %d (other processes now keep %.1f CPU(s) busy)", self.threads, n, other)
            self.threads = n
            self.changes.append((round(now - self._start, 1), n, round(other, 2)))
            if self.apply:
                set_torch_threads(n)
        return self.threads


_SET_TOO_LATE = False  # we set the policy after torch was imported: OpenMP had read it already


def prefer_passive_waiting() -> None:
    """Let idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``), unless the user
    chose (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` set). Takes effect only before torch is imported
    (the ``us3l`` command calls it first thing); called later it changes nothing."""
    global _SET_TOO_LATE
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if "torch" in sys.modules:
        _SET_TOO_LATE = True
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def passive_waiting() -> bool:
    """Whether torch's OpenMP threads sleep when idle: ``OMP_WAIT_POLICY=PASSIVE`` (or
    ``GOMP_SPINCOUNT=0``) in the environment, set by the user or by :func:`prefer_passive_waiting`
    before torch was imported."""
    if _SET_TOO_LATE:
        return False
    if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE":
        return True
    return os.environ.get("GOMP_SPINCOUNT", "").strip() == "0"
