"""`us3l widths`: channel counts, MACs and parameters per width, and which widths are aliases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated

import typer

from .common import console, user_errors


@dataclass(frozen=True)
class WidthsConfig:
    arch: str
    widths: str
    snap: int = 8
    input_size: int | None = None


def width_rows(cfg: WidthsConfig) -> list[dict]:
    """One row per width: width, channels, stage channels, MACs, params, feature dim, alias_of."""
    from ..models import get_model
    from ..profile import profile_width
    from ..slicing import find_aliases, stage_channels
    from ..width import parse_widths

    kwargs = {"input_size": cfg.input_size} if cfg.input_size else {}
    model = get_model(cfg.arch, **kwargs)
    widths = parse_widths(cfg.widths, *model.width_range)
    aliases = find_aliases(model, widths, cfg.snap)
    rows = []
    for w in widths:
        prof = profile_width(model, w, cfg.snap)
        rows.append({
            "width": w,
            "channels": prof.channels,
            "stages": stage_channels(prof.channels),
            "macs": prof.macs,
            "params": prof.params,
            "feature_dim": prof.feature_dim,
            "alias_of": aliases[w] if aliases[w] != w else None,
        })
    return rows


def register(app: typer.Typer) -> None:
    @app.command("widths")
    @user_errors
    def widths_command(
        arch: Annotated[str, typer.Option(help="Architecture name (see the error of an unknown name for the list).")] = "us_resnet_mini",
        widths: Annotated[str, typer.Option(help="Width list '0.25,0.5,1.0' or range 'start:stop:step'.")] = "0.25:1.0:0.25",
        snap: Annotated[int, typer.Option(help="Channel divisor: 8 is the method's rule; 16/32 snap for hardware.")] = 8,
        input_size: Annotated[int | None, typer.Option(help="Input resolution for MACs (default: the architecture's).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    ) -> None:
        """Per-width channels, MACs and parameters of an architecture (counted on the static slice)."""
        from ..errors import ConfigError

        if snap < 1:
            raise ConfigError(f"--snap must be a positive channel divisor, got {snap}; valid: 8, 16, 32")
        rows = width_rows(WidthsConfig(arch, widths, snap, input_size))
        if as_json:
            out = [{"width": r["width"], "channels": r["channels"], "macs": r["macs"], "params": r["params"],
                    "feature_dim": r["feature_dim"], "alias_of": r["alias_of"]} for r in rows]
            typer.echo(json.dumps(out, indent=2))
            return
        from rich.table import Table

        from ..width import format_width

        table = Table(title=f"{arch}: channels per width (divisor {snap})")
        for col in ("width", "stage channels", "feature dim", "MMACs", "params (M)", "alias of"):
            table.add_column(col, justify="right" if col not in ("stage channels",) else "left")
        for r in rows:
            table.add_row(format_width(r["width"]), "/".join(map(str, r["stages"])), str(r["feature_dim"]),
                          f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}",
                          format_width(r["alias_of"]) if r["alias_of"] is not None else "")
        console.print(table)
        n_alias = sum(r["alias_of"] is not None for r in rows)
        if n_alias:
            console.print(f"{n_alias} width(s) slice to the same network as a narrower listed width (aliases).")
