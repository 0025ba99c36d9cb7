"""Shared CLI plumbing: consoles, the user-error boundary, width-list options."""

from __future__ import annotations

import errno
import functools
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperGroup
from rich.markup import escape

from ..core.errors import US3LError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager as ContextManager

    from rich.progress import Progress

    from ..api.progress import ProgressFn

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


#: errno values of faults in the environment rather than in the program: each ends a command
#: with one line and exit code 2 (the atomic writers have already removed their temp files).
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                                errno.EISDIR, errno.ENAMETOOLONG, errno.EFBIG, errno.EIO, errno.ENOENT})


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that clean-up runs as for Ctrl-C (exit code 143)."""


def environment_error(exc: BaseException) -> str | None:
    """One line for an OS-level fault (full disk, read-only or unwritable folder...), else None.

    torch and onnx wrap write failures in ``RuntimeError``; those are recognised by their text.
    """
    seen = 0
    while not (isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS) and seen < 6:
        inner = exc.__cause__ or exc.__context__  # torch's zip writer re-raises ENOSPC as RuntimeError
        if inner is None:
            break
        exc, seen = inner, seen + 1
    if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        hint = {errno.ENOSPC: "free some space or choose another --out",
                errno.EDQUOT: "free some space or choose another --out",
                errno.EROFS: "choose a writable --out", errno.EACCES: "choose a writable --out",
                errno.EPERM: "choose a writable --out"}.get(exc.errno or 0, "check the path")
        return f"{exc.strerror or exc}{where}; {hint}"
    text = str(exc)
    if isinstance(exc, RuntimeError) and any(k in text for k in ("No space left on device", "file write failed",
                                                                 "Disk quota exceeded", "Read-only file system")):
        return f"writing a file failed ({text.strip().splitlines()[0][:160]}); free some space or choose another --out"
    return None


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def user_errors(fn: F) -> F:
    """Render :class:`US3LError` as one line on stderr with exit code 2 (no traceback).

    Environment faults (a full disk, a read-only or unwritable ``--out``) get one line and exit
    code 2 as well. Ctrl-C prints ``interrupted`` and exits 130; SIGTERM prints the same line and
    exits 143. Both unwind normally, so atomic writes leave the previous file intact.
    """

    command_name = "us3l " + fn.__module__.rsplit(".", 1)[-1].rstrip("_")  # us3l.cli.import_ -> us3l import

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            with heartbeat(command_name):
                return fn(*args, **kwargs)
        except US3LError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Terminated:
            err_console.print("interrupted")
            raise typer.Exit(143) from None
        except (OSError, RuntimeError) as exc:
            line = environment_error(exc)
            if line is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

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


def progress_bar(description: str, transient: bool = False, disable: bool = False,
                 lazy: bool = False) -> ContextManager[ProgressFn]:
    """:func:`us3l.api.progress.progress_bar` on this CLI's stderr console."""
    from ..api.progress import progress_bar as bar

    return bar(description, transient, disable, err_console, lazy)


def heartbeat(name: str = "us3l") -> ContextManager[Any]:
    """Plain progress lines for the whole command when stderr is not a terminal (a pipe, a CI log):
    a line at least every few seconds while it runs (:mod:`us3l.core.heartbeat`); else nothing."""
    import contextlib

    if err_console.is_terminal or not is_main_process():
        return contextlib.nullcontext()
    from ..api.progress import plain_heartbeat

    return plain_heartbeat(err_console, prefix=name)


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


def choice_error(exc: BaseException) -> str | None:
    """One line for a value outside a choice option's Enum (``--format tflite``), else None."""
    import enum
    import re
    import typing

    param = getattr(exc, "param", None)
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    choices = next((c for c in (annotation, *typing.get_args(annotation))
                    if isinstance(c, type) and issubclass(c, enum.Enum)), None)
    if choices is None or param is None:
        return None
    found = re.search(r"'(.*)' is not one of", str(getattr(exc, "message", "")))
    value = found.group(1) if found else None
    name = max(getattr(param, "opts", None) or [str(getattr(param, "name", "value"))], key=len)
    return (f"{name} {value!r} is invalid" if value is not None else f"{name} is invalid") + \
        f"; valid: {', '.join(str(c.value) for c in choices)}"


class OneLineChoiceErrors(TyperGroup):
    """The ``us3l`` group: a value outside a choice option's Enum is one line (``error: --format
    'tflite' is invalid; valid: onnx, trt, engine, pt2``), exit code 2, like every other bad input."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:
            line = choice_error(exc)
            if line is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(line)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
