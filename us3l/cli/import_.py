"""`us3l import`: convert a reference US3L checkpoint into this project's checkpoint format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import example, print_json, user_errors

EXAMPLE = "us3l import checkpoint_0199.pth.tar --out r18.pt --arch us_resnet18_cifar"


def register(app: typer.Typer) -> None:
    @app.command("import", epilog=example(EXAMPLE))
    @user_errors
    def command(
        source: Annotated[Path, typer.Argument(help="Reference checkpoint (*.pth.tar with a state_dict).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Our checkpoint to write (atomically).")],
        arch: Annotated[Optional[str], typer.Option(help="Architecture.  [default: detected from the key shapes]")] = None,
        calibrated_width: Annotated[Optional[float], typer.Option(help="Width in [0.25, 1.0] the file's BN statistics were calibrated at (they join the BN bank).  [default: none, export recalibrates]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print what was imported as JSON.")] = False,
    ) -> None:
        """Import a reference US3L checkpoint (the online encoder; momentum encoder, projector and predictors dropped)."""
        from ..api import import_reference

        from .common import console

        model = import_reference(source, out, arch=arch, calibrated_width=calibrated_width)
        if as_json:
            print_json({"checkpoint": out, "source": source, "arch": model.arch, "bn_widths": model.calibrated_widths()})
            return
        bank = ", ".join(f"{w:g}" for w in model.calibrated_widths()) or "none (export will recalibrate: pass --calib-data)"
        console.print(f"imported {model.arch} from {source} -> {out} (BN statistics for widths: {bank})")
