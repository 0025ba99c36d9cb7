"""Progress bars shared by the CLI and the Python API (rich, imported lazily).

Long calls report ``progress(done, total, message)`` (``total`` ``None`` while unknown).
:func:`progress_bar` turns that protocol into a rich bar on stderr: the CLI draws its bars with
it, and the Python API does the same for ``progress=True``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

ProgressFn = Callable[[int, Optional[int], str], None]
#: What the API's ``progress=`` accepts: a callback, ``True`` for a rich bar, or ``None``/``False``.
ProgressArg = Union[ProgressFn, bool, None]


def make_progress(transient: bool = False, disable: bool = False, console: Console | None = None) -> Progress:
    """A rich progress bar with description, bar, count, elapsed and remaining time (on stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console or Console(stderr=True),
        transient=transient,
        disable=disable,
    )


PLAIN_EVERY_S = 5.0  # seconds between plain progress lines when stderr is not a terminal


@contextlib.contextmanager
def progress_bar(description: str, transient: bool = False, disable: bool = False,
                 console: Console | None = None) -> Iterator[ProgressFn]:
    """A live bar for the duration of the block; yields the ``progress(done, total, message)`` callback.

    When the console is not a terminal (a log file, CI), a live bar would show nothing until the end:
    progress is then one plain line at most every :data:`PLAIN_EVERY_S` seconds (environment
    ``US3L_PROGRESS_SECONDS`` overrides), plus the last one.
    """
    if not disable:
        from rich.console import Console

        console = console or Console(stderr=True)
        if not console.is_terminal:
            with _plain_lines(description, console) as update:
                yield update
            return
    with make_progress(transient, disable, console) as bar:
        task = bar.add_task(description, total=None, status="")

        def update(done: int, total: int | None, message: str) -> None:
            bar.update(task, completed=done, total=total, status=message)

        yield update


@contextlib.contextmanager
def resolve_progress(progress: ProgressArg, description: str) -> Iterator[Any]:
    """The callback to hand to a room: the caller's own, a rich bar for ``True``, else ``None``."""
    if progress is True:
        with progress_bar(description) as update:
            yield update
    else:
        yield progress or None


@contextlib.contextmanager
def _plain_lines(description: str, console: Console) -> Iterator[ProgressFn]:
    import os
    import time

    try:
        every = float(os.environ.get("US3L_PROGRESS_SECONDS", PLAIN_EVERY_S))
    except ValueError:
        every = PLAIN_EVERY_S
    start = time.monotonic()
    state: dict[str, Any] = {"shown": None, "last": None}

    def line(done: int, total: int | None, message: str) -> None:
        elapsed = int(time.monotonic() - start)
        count = f"{done}/{total}" if total else str(done)
        console.print(f"{description}: {count} [{elapsed // 60}:{elapsed % 60:02d}] {message}".rstrip(),
                      highlight=False, markup=False, soft_wrap=True)

    def update(done: int, total: int | None, message: str) -> None:
        now = time.monotonic()
        state["last"] = (done, total, message)
        if state["shown"] is None or now - state["shown"] >= every or (total and done >= total):
            state["shown"] = now
            state["printed"] = state["last"]
            line(done, total, message)

    yield update
    if state["last"] is not None and state.get("printed") != state["last"]:
        line(*state["last"])
