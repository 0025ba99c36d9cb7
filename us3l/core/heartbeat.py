"""Named stages and a heartbeat: a long job that is working says so, even in a log file.

Any code (a room, the API) marks a long stage with :func:`stage`::

    with stage("BN recalibration at width 0.5", total=len(batches)) as s:
        for i, batch in enumerate(batches):
            ...
            s.update(i + 1)

Without an active :class:`Heartbeat` that costs next to nothing. The ``us3l`` command starts one
when stderr is not a terminal (a pipe, a CI log): it prints a plain line on updates at most every
``every`` seconds (a command's main progress also at its first and last update), and from a
background thread whenever nothing was printed for ``every`` seconds, so a slow stage cannot go
silent. Each line names the stage (inside its
enclosing stages), its count and total, the elapsed time and an estimate of the time left::

    evaluating > width 0.5 > BN recalibration: 12/50, 0:04 elapsed, eta 0:13

``every`` is :data:`DEFAULT_EVERY_S` (environment ``US3L_PROGRESS_SECONDS`` overrides it; 0 prints
every update). Before anything was printed the first heartbeat waits a little longer
(:data:`STARTUP_QUIET_S`, at most twice ``every``), so a command refusing bad input after a slow
start-up still prints its one error line alone. Stages are per process and may be opened from any thread; the innermost open stage
is the one reported.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

DEFAULT_EVERY_S = 5.0  # at most this long between two plain lines (the goal is 10 s)
STARTUP_QUIET_S = 8.0  # before anything was printed, the first line waits up to this long (2 x every at most)


def plain_every() -> float:
    """Seconds between plain lines: ``US3L_PROGRESS_SECONDS`` or :data:`DEFAULT_EVERY_S`."""
    try:
        value = float(os.environ.get("US3L_PROGRESS_SECONDS", DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value >= 0 else DEFAULT_EVERY_S


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    s = max(0, int(round(seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Stage:
    """One open stage: name, progress and status text (updated by its owner)."""

    name: str
    total: int | None = None
    done: int = 0
    message: str = ""
    unit: str = ""
    announce: bool = False  # print its first and last count at once (a command's main bar), not only when due
    started: float = field(default_factory=time.monotonic)
    first_done_at: float | None = None  # when the first unit finished (the ETA's rate starts there)
    first_done: int = 0

    def update(self, done: int | None = None, total: int | None = None, message: str | None = None) -> None:
        """Record progress; a running :class:`Heartbeat` prints it when a line is due."""
        if total is not None:
            self.total = int(total)
        if done is not None:
            done = int(done)
            if self.first_done_at is None and done > 0:
                self.first_done_at, self.first_done = time.monotonic(), done
            self.done = done
        if message is not None:
            self.message = message
        hb = _active
        if hb is not None:
            hb.updated(self)

    def advance(self, n: int = 1, message: str | None = None) -> None:
        self.update(self.done + n, None, message)

    def eta(self, now: float | None = None) -> float | None:
        """Seconds left at the rate since the first finished unit (None while unknown)."""
        if not self.total or self.done <= 0:
            return None
        if self.done >= self.total:
            return 0.0
        now = time.monotonic() if now is None else now
        if self.first_done_at is not None and self.done > self.first_done and now > self.first_done_at:
            rate = (self.done - self.first_done) / (now - self.first_done_at)
        elif now - self.started >= 1.0:
            rate = self.done / (now - self.started)
        else:
            return None  # one quick unit says little about the rest
        return (self.total - self.done) / rate if rate > 0 else None

    def count(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total:
            return f"{self.done}/{self.total}{unit}"
        return f"{self.done}{unit}" if self.done else ""


def summary(stages: list[Stage]) -> tuple[str, Stage, str]:
    """``(path of stage names, the innermost stage with a count, its innermost message)`` of open stages;
    the path shows the counts of the enclosing counted stages (``widths 2/4 > BN recalibration w0.5``)."""
    counted = next((s for s in reversed(stages) if s.total or s.done), stages[-1])
    message = next((s.message for s in reversed(stages[stages.index(counted):]) if s.message), "")
    path = " > ".join(f"{s.name} {s.count()}" if s is not counted and s.total else s.name for s in stages)
    return path, counted, message


class Display:
    """Where open stages are shown: the base class shows nothing. :class:`Heartbeat` prints plain
    lines; ``us3l.api.progress`` draws a live bar on a terminal. Entering one makes it the active
    display of the process (the previous one returns on exit)."""

    def opened(self, s: Stage) -> None: ...

    def closed(self, s: Stage) -> None: ...

    def updated(self, s: Stage) -> None: ...

    def __enter__(self) -> Display:
        global _active
        self._previous = _active
        _active = self
        return self

    def __exit__(self, *exc: object) -> None:
        global _active
        _active = self._previous


class Heartbeat(Display):
    """Prints plain progress lines for the open stages (see the module docstring).

    Args:
        write: prints one line (the CLI's stderr console).
        every: most seconds between two lines while any stage is open.
        prefix: the outermost name (e.g. ``us3l train``), shown while no stage is open.
    """

    def __init__(self, write: Callable[[str], None], every: float | None = None, prefix: str = "") -> None:
        self.write, self.every, self.prefix = write, plain_every() if every is None else float(every), prefix
        self.stages: list[Stage] = []
        self.lock = threading.RLock()
        self.last_line = time.monotonic()
        self.started = self.last_line
        self.shown: dict[int, tuple[int, str]] = {}  # id(stage) -> what was last printed of it
        self.printed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lines
    def line(self, now: float | None = None) -> str:
        """The current state as one line: the stage path, the innermost count, times, its message."""
        now = time.monotonic() if now is None else now
        with self.lock:
            stages = list(self.stages)
        if not stages:
            return f"{self.prefix or 'working'}: {clock(now - self.started)} elapsed"
        path, counted, message = summary(stages)
        parts = [p for p in (counted.count(),) if p]
        parts.append(f"{clock(now - counted.started)} elapsed")
        eta = counted.eta(now)
        if eta is not None:
            parts.append(f"eta {clock(eta)}")
        return f"{path}: {', '.join(parts)}" + (f"; {message}" if message else "")

    def emit(self, text: str | None = None) -> None:
        with self.lock:
            self.printed = True
            self.last_line = time.monotonic()
            self.write(self.line(self.last_line) if text is None else text)

    # ----------------------------------------------------------------- stage events
    def opened(self, s: Stage) -> None:
        with self.lock:
            self.stages.append(s)

    def closed(self, s: Stage) -> None:
        with self.lock:
            if s.announce and s.done and self.shown.get(id(s), (None,))[0] != s.done:
                self.emit()  # the last count, unless it was just shown
            self.shown.pop(id(s), None)
            if s in self.stages:
                self.stages.remove(s)

    def updated(self, s: Stage) -> None:
        with self.lock:
            now = time.monotonic()
            if s is not (self.stages[-1] if self.stages else None):
                return  # an outer stage: its state shows in the inner stage's lines
            first_or_last = s.announce and (id(s) not in self.shown or (bool(s.total) and s.done >= (s.total or 0)))
            if now - self.last_line >= self.every or first_or_last:
                self.emit()
                self.shown[id(s)] = (s.done, s.message)

    # ----------------------------------------------------------------- the thread
    def _run(self) -> None:
        tick = min(0.5, max(self.every / 4, 0.05))
        # Start-up (imports, loading a checkpoint) is quiet for a little longer than `every`, within the
        # 10 s goal: a command that fails on bad input within that time prints its one error line alone.
        first = max(self.every, min(2 * self.every, STARTUP_QUIET_S))
        while not self._stop.wait(tick):
            with self.lock:
                wait = self.every if self.printed else first
                due = time.monotonic() - self.last_line >= wait
            if due:
                self.emit()

    def __enter__(self) -> Heartbeat:
        super().__enter__()
        if self.every > 0:
            self._thread = threading.Thread(target=self._run, name="us3l-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        super().__exit__(*exc)


_active: Display | None = None


def active() -> Display | None:
    """The display showing stages in this process, if any."""
    return _active


@contextlib.contextmanager
def stage(name: str, total: int | None = None, unit: str = "", announce: bool = False) -> Iterator[Stage]:
    """Open a named stage for the duration of the block; yields it for :meth:`Stage.update`.

    ``announce``: print the stage's first and last update at once (a command's main progress),
    not only when a line is due.
    """
    s = Stage(name, total=total, unit=unit, announce=announce)
    hb = _active
    if hb is not None:
        hb.opened(s)
    try:
        yield s
    finally:
        if hb is not None:
            hb.closed(s)
