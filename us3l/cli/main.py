"""Root of the ``us3l`` command line. Each command lives in its own module with a ``register(app)``."""

from __future__ import annotations

import importlib
from typing import Annotated

from ..core.threads import prefer_passive_waiting

prefer_passive_waiting()  # before torch is imported: idle OpenMP threads sleep instead of spinning (docs/deployment.md)

import typer  # noqa: E402

from ..core import __version__  # noqa: E402
from .common import OneLineChoiceErrors, setup_logging  # noqa: E402

COMMAND_MODULES = ("train", "eval", "export", "import_", "bench", "widths", "finetune", "predict", "pack", "fleet")

app = typer.Typer(
    name="us3l",
    help="One universally slimmable SSL checkpoint -> any width -> ONNX/TensorRT -> the width that fits your device.",
    no_args_is_help=True,
    epilog="Example: us3l train && us3l eval runs/us3l/checkpoint.pt && us3l bench runs/us3l/checkpoint.pt --budget-ms 2",
    pretty_exceptions_show_locals=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=OneLineChoiceErrors,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"us3l-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show progress log messages.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """us3l: train, evaluate, export and benchmark universally slimmable networks."""
    setup_logging(verbose)


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__package__}.{_name}").register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
