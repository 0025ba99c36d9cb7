"""`us3l widths`: channel counts, MACs and parameters per width, and which widths are aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .choices import Snap
from .common import console, example, user_errors

EXAMPLE = "us3l widths --arch us_resnet18_cifar --widths 0.25,0.35,0.5,1.0"


def register(app: typer.Typer) -> None:
    @app.command("widths", epilog=example(EXAMPLE))
    @user_errors
    def widths_command(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint whose network to describe (or use --arch).")] = None,
        arch: Annotated[Optional[str], typer.Option(help="Architecture name; an unknown name lists the valid ones.  [default: us_resnet_mini]")] = None,
        widths: Annotated[str, typer.Option("--widths", "--width", help="Widths: a list 0.25,0.5,1.0 or a range start:stop:step.")] = "0.25:1.0:0.25",
        snap: Annotated[Snap, typer.Option(help="Channel divisor: 8 is the method's rule; 16/32 snap for hardware.")] = Snap.s8,
        image_size: Annotated[Optional[int], typer.Option(help="Square input side in pixels for the MAC count.  [default: the architecture's]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    ) -> None:
        """Per-width channels, MACs and parameters of a network (counted on the static slice)."""
        from ..api import widths as width_table
        from ..core.errors import ConfigError

        if checkpoint is not None and (arch is not None or image_size is not None):
            raise ConfigError("give a checkpoint or --arch/--image-size, not both (the checkpoint fixes the network)")
        if arch is not None:
            from ..core.errors import unknown_name
            from ..core.models import list_models

            if arch not in list_models():
                raise unknown_name("architecture", arch, list_models())
        source = checkpoint if checkpoint is not None else (arch or "us_resnet_mini")
        rows = width_table(source, widths, snap=int(snap.value), image_size=image_size)
        if as_json:
            out = [{"width": r.width, "channels": r.channels, "macs": r.macs, "params": r.params,
                    "feature_dim": r.feature_dim, "alias_of": r.alias_of} for r in rows]
            typer.echo(json.dumps(out, indent=2))
            return
        from rich.table import Table

        from ..core.width import format_width

        name = checkpoint.name if checkpoint is not None else source
        table = Table(title=f"{name}: channels per width (divisor {snap.value})")
        for col in ("width", "stage channels", "feature dim", "MMACs", "params (M)", "alias of"):
            table.add_column(col, justify="right" if col not in ("stage channels",) else "left")
        for r in rows:
            table.add_row(format_width(r.width), "/".join(map(str, r.stages)), str(r.feature_dim),
                          f"{r.macs / 1e6:.2f}", f"{r.params / 1e6:.3f}",
                          format_width(r.alias_of) if r.alias_of is not None else "")
        console.print(table)
        n_alias = sum(r.alias_of is not None for r in rows)
        if n_alias:
            console.print(f"{n_alias} width(s) slice to the same network as a narrower listed width (aliases).")
