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


@contextlib.contextmanager
def progress_bar(description: str, transient: bool = False, disable: bool = False,
                 console: Console | None = None) -> Iterator[ProgressFn]:
    """A live bar for the duration of the block; yields the ``progress(done, total, message)`` callback."""
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
