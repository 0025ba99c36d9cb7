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
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint file (training or task checkpoint), or with --reseal a model directory.")],
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Model directory to write (created if needed).  [default: model/ beside the checkpoint]")] = None,
        reseal: Annotated[bool, typer.Option("--reseal", help="Accept re-saved or edited weights in a model directory: check every tensor's name, shape and dtype against its config.json and record the new hash.")] = False,
        license: Annotated[str | None, typer.Option(help="License in the model card's front matter.  [default: apache-2.0, or the card's]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Write model.safetensors + config.json + README.md (timm's Hugging Face Hub layout), without optimizer, EMA or resume state.

        Every command that takes a checkpoint also takes the directory.
        """
        from ..api import pack

        result = pack(checkpoint, out, reseal=reseal, license=license)
        if as_json:
            print_json(result.to_dict())
            return
        if result.resealed is not None:
            r = result.resealed
            console.print(f"resealed {result.directory}: {r.tensors} tensors match config.json; weights sha256 "
                          f"{(r.old_sha256 or '?')[:12]} -> {r.new_sha256[:12]}")
            if r.values_changed:
                console.print(f"[yellow]note:[/] the backbone's values changed (content hash {(r.old_content_hash or '?')[:12]} "
                              f"-> {r.new_content_hash[:12]}): accuracy measured before no longer joins; run 'us3l eval "
                              f"{result.directory}'")
            return
        console.print(f"wrote {result.directory}: {', '.join(f.name for f in result.files)} "
                      f"({result.size_bytes / 1e6:.2f} MB; checkpoint {result.source_bytes / 1e6:.2f} MB)")
