"""`us3l import`: convert a reference US3L checkpoint into this project's checkpoint format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("import")
    @user_errors
    def command(
        source: Annotated[Path, typer.Argument(help="Reference checkpoint (*.pth.tar with state_dict).")],
        out: Annotated[Path, typer.Option("--out", "-o", help="Our checkpoint to write (atomically).")],
        arch: Annotated[Optional[str], typer.Option(help="Architecture (default: detected from key shapes).")] = None,
        calibrated_width: Annotated[Optional[float], typer.Option(help="Width the file's BN statistics were calibrated at.")] = None,
    ) -> None:
        """Import a reference US3L checkpoint (online encoder; momentum encoder, predictors and projector dropped)."""
        from exporters import ImportConfig, import_reference

        from .common import console

        ckpt = import_reference(ImportConfig(source=str(source), out=str(out), arch=arch, calibrated_width=calibrated_width))
        bank = ", ".join(f"{w:g}" for w in ckpt.bank_widths()) or "none (export will recalibrate: pass --calib-data)"
        console.print(f"imported {ckpt.arch} from {source} -> {out} (BN statistics for widths: {bank})")
