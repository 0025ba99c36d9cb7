"""Shared CLI plumbing: consoles, the user-error boundary, width-list options."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..core.errors import US3LError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager as ContextManager

    from rich.progress import Progress

    from ..api.progress import ProgressFn

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Render :class:`US3LError` as one line on stderr with exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except US3LError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


EXAMPLE_PREFIX = "Example: "


def example(command_line: str) -> str:
    """The epilog of a command's ``--help``: one real invocation (tests parse it against the CLI)."""
    return EXAMPLE_PREFIX + command_line


def setup_logging(verbose: bool) -> None:
    """Route library logging through rich (INFO with --verbose, WARNING otherwise)."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )


def is_main_process() -> bool:
    """False on the non-zero ranks of a ``torchrun`` launch (they neither draw nor print results)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def make_progress(transient: bool = False, disable: bool = False) -> Progress:
    """A rich progress bar on this CLI's stderr console (see :func:`us3l.api.progress.make_progress`)."""
    from ..api.progress import make_progress as build

    return build(transient, disable, err_console)


def progress_bar(description: str, transient: bool = False, disable: bool = False) -> ContextManager[ProgressFn]:
    """:func:`us3l.api.progress.progress_bar` on this CLI's stderr console."""
    from ..api.progress import progress_bar as bar

    return bar(description, transient, disable, err_console)


def jsonable(obj: Any) -> Any:
    """Dataclasses, paths, tuples and enums as plain JSON values (for ``--json``)."""
    import dataclasses
    import enum
    from pathlib import PurePath

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, enum.Enum):
        return obj.value
    return obj


def print_json(obj: Any) -> None:
    """Print a result as JSON on stdout: nothing else goes to stdout with ``--json``."""
    import json

    typer.echo(json.dumps(jsonable(obj), indent=2, sort_keys=True))
