"""`us3l pack`: a checkpoint as a shareable model directory (model.safetensors + config.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import console, example, print_json, user_errors

EXAMPLE = "us3l pack runs/us3l/checkpoint.pt --out runs/us3l/model"


def register(app: typer.Typer) -> None:
    @app.command("pack", epilog=example(EXAMPLE))
    @user_errors
    def command(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (training or task checkpoint).")],
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Model directory to write (created if needed).  [default: model/ beside the checkpoint]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Write model.safetensors + config.json (Hugging Face Hub layout), without optimizer, EMA or resume state.

        Every command that takes a checkpoint also takes the directory.
        """
        from ..api import pack

        result = pack(checkpoint, out)
        if as_json:
            print_json(result.to_dict())
            return
        console.print(f"wrote {result.directory}: {', '.join(f.name for f in result.files)} "
                      f"({result.size_bytes / 1e6:.2f} MB; checkpoint {result.source_bytes / 1e6:.2f} MB)")
