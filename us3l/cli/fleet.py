"""`us3l fleet plan|check`: one fleet file -> one deployment manifest, and a later check that it still holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, err_console, example, print_json, progress_bar, user_errors

PLAN_EXAMPLE = "us3l fleet plan docs/fleet.example.toml -o plan"
CHECK_EXAMPLE = "us3l fleet check plan/manifest.json --threshold 10"
#: Exit code of a plan with a device not planned, or a check that found a problem (2: bad input).
EXIT_INCOMPLETE = 1


def register(app: typer.Typer) -> None:
    fleet = typer.Typer(name="fleet", help="Plan a fleet of devices from one file, and check the plan later.",
                        no_args_is_help=True, rich_markup_mode=None, epilog=example(f"{PLAN_EXAMPLE} && {CHECK_EXAMPLE}"))
    app.add_typer(fleet, name="fleet")

    @fleet.command("plan", epilog=example(PLAN_EXAMPLE))
    @user_errors
    def plan(
        fleet_file: Annotated[Path, typer.Argument(help="Fleet TOML: the model, the widths and one [devices.NAME] table per device with its budget.",
                                                   exists=True, dir_okay=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="Plan folder for manifest.json, fleet.csv, fleet.png, artifacts/ and bench/ (the lookup table).")] = Path("plan"),
        force: Annotated[bool, typer.Option(help="Re-export and re-measure points already in the plan's lookup table.")] = False,
        no_plot: Annotated[bool, typer.Option("--no-plot", help="Skip fleet.png.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print manifest.json to stdout instead of the table.")] = False,
    ) -> None:
        """Choose, for every device of the fleet file, the most accurate width and precision within its budget.

        Each device is measured and chosen exactly as 'us3l bench --budget-ms' would (same lookup
        table, so a re-plan measures only what is new). Exits 1 when a device could not be planned
        (its reason is in the manifest); the others are planned.
        """
        from rich.markup import escape

        from us3l.fleet import render_fleet_table

        from ..api import fleet_plan

        with progress_bar("planning", transient=True) as progress:
            result = fleet_plan(fleet_file, out, force=force, plot=not no_plot, progress=progress)
        if as_json:
            print_json(result.manifest)
        else:
            console.print(render_fleet_table(result.manifest["devices"], max_width=console.width))
            for d in result.devices:
                if d.planned:
                    console.print(f"deploy {d.device}: {Path(result.files['manifest']).parent / (d.artifact or '')}"
                                  + (" (build the engine on the device)" if d.build_on_device else ""),
                                  highlight=False, soft_wrap=True)
            files = result.files
            console.print(f"manifest: {files['manifest']}  csv: {files['csv']}"
                          + (f"  plot: {files['plot']}" if "plot" in files else ""))
        for d in result.devices:
            if not d.planned:
                err_console.print(f"error: device {d.device} not planned: {escape(d.reason or '')}", highlight=False,
                                  soft_wrap=True)
        if not result.complete:
            raise typer.Exit(EXIT_INCOMPLETE)

    @fleet.command("check", epilog=example(CHECK_EXAMPLE))
    @user_errors
    def check(
        manifest: Annotated[Path, typer.Argument(help="manifest.json of a plan folder (its artifacts are found beside it).",
                                                 exists=True, dir_okay=False)],
        threshold: Annotated[float, typer.Option(help="Largest change of a device's p50 latency, in percent, before it counts as drifted.")] = 10.0,
        devices_file: Annotated[Optional[Path], typer.Option(help="Device profiles TOML.  [default: the plan's devices file, else ~/.config/us3l/devices.toml]")] = None,
        accept_new_host_key: Annotated[bool, typer.Option(help="Trust an unknown SSH host key on first contact (accept-new).")] = False,
        deployed: Annotated[Optional[list[str]], typer.Option("--deployed", metavar="NAME=PATH", help="Where device NAME holds its file (absolute path there), over the manifest's deploy_path; repeatable.  [default: the manifest's]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print each device's check as JSON.")] = False,
    ) -> None:
        """Re-measure each planned device's artifact and verify its sha256 on the device.

        A device with a deploy path (deploy_path in the fleet file, or --deployed) has that very file
        hashed and measured on it; the others have the plan copy checked (uploaded over ssh). One line
        per device: OK, DRIFT (p50 beyond --threshold), HASH (the file differs or is missing),
        UNREACHABLE, ERROR or SKIPPED (not planned). Exits 1 when any device is not OK; every device is
        still checked.
        """
        from rich.markup import escape

        from us3l.fleet import parse_deployed

        from ..api import fleet_check

        where = dict(parse_deployed(deployed or []))
        with progress_bar("checking", transient=True) as progress:
            result = fleet_check(manifest, threshold_pct=threshold, devices_file=devices_file,
                                 accept_new_host_key=accept_new_host_key, deployed=where, progress=progress)
        if as_json:
            print_json(result.to_dict())
        else:
            colors = {"OK": "green", "SKIPPED": "yellow"}
            for d in result.devices:
                color = colors.get(d.status, "red")
                console.print(f"[bold {color}]{d.status:<11}[/] {escape(d.device)}: {escape(d.message)}",
                              highlight=False, soft_wrap=True)
        if not result.ok:
            raise typer.Exit(EXIT_INCOMPLETE)
