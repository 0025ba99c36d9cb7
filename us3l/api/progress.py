"""Progress bars shared by the CLI and the Python API (rich, imported lazily).

Long calls report ``progress(done, total, message)`` (``total`` ``None`` while unknown).
:func:`progress_bar` turns that protocol into a rich bar on stderr: the CLI draws its bars with
it, and the Python API does the same for ``progress=True``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional, Union

from ..core.heartbeat import DEFAULT_EVERY_S, Display, Heartbeat, Stage, active, stage, summary

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

ProgressFn = Callable[[int, Optional[int], str], None]
#: What the API's ``progress=`` accepts: a callback, ``True`` for a rich bar, or ``None``/``False``.
ProgressArg = Union[ProgressFn, bool, None]


def make_progress(transient: bool = False, disable: bool = False, console: Console | None = None) -> Progress:
    """A rich progress bar with description, bar, count, elapsed and remaining time (on stderr).

    Laid out for narrow terminals: the count and the times never wrap or shrink; the description,
    the bar and the status text give way first (the status is cut with an ellipsis), so at 80
    columns the bar still shows ``12/40 0:00:31 0:01:02``.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column

    fixed = dict(no_wrap=True, overflow="ignore")
    return Progress(
        TextColumn("[progress.description]{task.description}",
                   table_column=Column(no_wrap=True, overflow="ellipsis", max_width=28)),
        BarColumn(bar_width=12),
        MofNCompleteColumn(table_column=Column(**fixed)),  # type: ignore[arg-type]
        TimeElapsedColumn(table_column=Column(**fixed)),  # type: ignore[arg-type]
        TimeRemainingColumn(table_column=Column(**fixed)),  # type: ignore[arg-type]
        TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
        console=console or Console(stderr=True),
        transient=transient,
        disable=disable,
        expand=True,
    )


#: seconds between plain progress lines when stderr is not a terminal (see us3l.core.heartbeat)
PLAIN_EVERY_S = DEFAULT_EVERY_S


@contextlib.contextmanager
def progress_bar(description: str, transient: bool = False, disable: bool = False,
                 console: Console | None = None, lazy: bool = False) -> Iterator[ProgressFn]:
    """A live bar for the duration of the block; yields the ``progress(done, total, message)`` callback.

    When the console is not a terminal (a log file, CI), a live bar would show nothing until the end:
    progress is then plain lines from a :class:`us3l.core.heartbeat.Heartbeat` (the command's own,
    or one started here): the first and last update, one at most every :data:`PLAIN_EVERY_S`
    seconds (environment ``US3L_PROGRESS_SECONDS`` overrides), and a line from the stage running
    inside whenever nothing was printed for that long.

    ``lazy``: on a terminal, draw the bar only from the first update (an early one-line error then
    stays one line).
    """
    if not disable:
        from rich.console import Console

        console = console or Console(stderr=True)
        if not console.is_terminal:
            with plain_heartbeat(console) as _, stage(description, announce=True) as current:
                yield lambda done, total, message: current.update(done, total, message)
            return
    bar = make_progress(transient, disable, console)
    with _BarDisplay(bar, lazy and not disable) as display, stage(description, announce=True) as current:
        display.own = current

        def update(done: int, total: int | None, message: str) -> None:
            current.update(done, total, message)

        yield update


class _BarDisplay(Display):
    """A live rich bar that shows the innermost open stage with a count: its path, count, times and message.

    When that stage changes (an export phase, then a measuring phase) the bar's count and its time
    estimate start again, named by the new stage.
    """

    def __init__(self, bar: Progress, lazy: bool) -> None:
        self.bar, self.lazy = bar, lazy
        self.task = bar.add_task("", total=None, status="")
        self.stages: list[Stage] = []
        self.shown: Stage | None = None
        self.own: Stage | None = None

    def opened(self, s: Stage) -> None:
        self.stages.append(s)
        self._refresh()

    def closed(self, s: Stage) -> None:
        if s in self.stages:
            self.stages.remove(s)
        if self.stages:
            self._refresh()

    def updated(self, s: Stage) -> None:
        if self.lazy and not self.bar.live.is_started and s is self.own:
            self.bar.start()
        self._refresh()

    def _refresh(self) -> None:
        if not self.stages:
            return
        _, counted, message = summary(self.stages)
        at = self.stages.index(counted)
        outer = [f"{s.name} {s.count()}" for s in self.stages[:at] if s.total and s is not self.own]
        inner = " > ".join(s.name for s in self.stages[at + 1:])
        status = "; ".join(t for t in (*outer, inner, message) if t)
        if counted is not self.shown:
            self.shown = counted
            self.bar.reset(self.task, total=counted.total, completed=counted.done, description=counted.name,
                           status=status)
            task = self.bar._tasks.get(self.task)  # the stage's own start: elapsed is the stage's, not the bar's
            if task is not None and self.bar.get_time is time.monotonic:
                task.start_time = counted.started
        self.bar.update(self.task, total=counted.total, completed=counted.done, description=counted.name,
                        status=status)

    def __enter__(self) -> _BarDisplay:
        super().__enter__()
        if not self.lazy:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.bar.live.is_started:
                self.bar.stop()
        finally:
            super().__exit__(*exc)


@contextlib.contextmanager
def plain_heartbeat(console: Console, prefix: str = "") -> Iterator[Display]:
    """The active display (a heartbeat), or a new heartbeat printing plain lines on ``console`` for the block."""
    running = active()
    if running is not None:
        yield running
        return

    def write(line: str) -> None:
        console.print(line, highlight=False, markup=False, soft_wrap=True)

    with Heartbeat(write, prefix=prefix) as hb:
        yield hb


@contextlib.contextmanager
def resolve_progress(progress: ProgressArg, description: str) -> Iterator[Any]:
    """The callback to hand to a room: the caller's own, a rich bar for ``True``, else ``None``."""
    if progress is True:
        with progress_bar(description) as update:
            yield update
    else:
        yield progress or None
