"""`us3l bench`: latency per width on a device, cached lookup table, width choice for a budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .choices import BenchOutputs, Metric, Runner, Snap, value
from .common import console, err_console, example, print_json, progress_bar, user_errors

if TYPE_CHECKING:
    from ..api import BenchResult

EXAMPLE = ("us3l bench runs/us3l/checkpoint.pt --device cpu --widths 0.25:1.0:0.25 --precision fp32,int8 --budget-ms 2 "
           "--out runs/us3l/bench")


def render(result: BenchResult) -> None:
    """The latency table, the files written and the choice line."""
    from rich.markup import escape

    from us3l.benchmarks.report import render_table

    from ..core.width import format_width

    console.print(render_table(result.report, max_width=console.width))
    if result.stability_note:
        err_console.print(f"[bold yellow]warning:[/] {escape(result.stability_note)}", highlight=False, soft_wrap=True)
    if result.accuracy_note:
        console.print(f"[yellow]note:[/] {escape(result.accuracy_note)}")
    if result.report.get("accuracy_unknown_note"):  # one notice: which timed files have no measured accuracy
        console.print(f"[yellow]notice:[/] {escape(result.report['accuracy_unknown_note'])}")
    files = result.files
    console.print(f"report: {files['report']}  csv: {files['csv']}" + (f"  plot: {files['plot']}" if "plot" in files else ""))
    if result.budget_ms is None:
        return
    if result.chosen is not None:
        c = result.chosen
        unstable = " [bold yellow](unstable)[/]" if result.unstable else ""
        console.print(f"[bold green]chosen width {format_width(c.width)} {c.precision}[/]{unstable}: {c.metric} "
                      f"{c.latency_ms:.3f} ms <= {c.budget_ms:g} ms ({escape(c.reason)})")
        if c.artifact:
            console.print(f"deploy: {escape(str(files['report'].parent / c.artifact))}")  # the report names it from its folder
        if c.noise:
            console.print(f"[yellow]note:[/] {escape(c.noise)}")
    else:
        console.print(f"[bold red]no width fits[/]: {result.reason}")


def register(app: typer.Typer) -> None:
    @app.command("bench", epilog=example(EXAMPLE))
    @user_errors
    def command(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint file or packed model directory (its accuracy.json is joined), or a switchable .onnx file (its widths); or --arch.",
                                                             exists=True)] = None,
        arch: Annotated[Optional[str], typer.Option(help="Untrained architecture instead of a checkpoint, for latency planning (latency does not depend on weights).  [default: the checkpoint's]")] = None,
        device: Annotated[str, typer.Option(help="cpu, cuda, jetson, or a profile name from us3l-devices.toml.")] = "cpu",
        devices_file: Annotated[Optional[Path], typer.Option(help="Device profiles TOML (a ./us3l-devices.toml is read only when named here).  [default: ~/.config/us3l/devices.toml]")] = None,
        widths: Annotated[Optional[str], typer.Option("--widths", "--width", help="Widths: a list 0.25,0.5 or a range 0.25:1.0:0.05.  [default: 0.25:1.0:0.25 plus the checkpoint's calibrated and evaluated widths]")] = None,
        batch: Annotated[str, typer.Option(help="Batch sizes in images, e.g. 1,8,32 (the budget applies to the first).")] = "1",
        runner: Annotated[Optional[Runner], typer.Option(help="Backend that times the artifacts (onnxruntime on a remote device runs the agent there).  [default: the device's]")] = None,
        precision: Annotated[Optional[str], typer.Option(metavar="[fp32|fp16|int8][,...]", help="Precision or comma list, e.g. fp32,int8: every (width, precision) pair is measured.  [default: the device's]")] = None,
        threads: Annotated[Optional[int], typer.Option(help="Intra-op CPU threads of the measured runtime; 0 = auto: one per CPU other processes leave idle (recorded in report.json).  [default: the device profile's, else auto on a CPU, else the runtime's]")] = None,
        duration: Annotated[float, typer.Option(help="Timed seconds per width and batch size.")] = 1.0,
        iterations: Annotated[Optional[int], typer.Option(help="Fixed timed runs per width and batch size (overrides --duration).  [default: time-based, --duration]")] = None,
        warmup_ms: Annotated[float, typer.Option(help="Warm-up per input shape, in milliseconds.")] = 200.0,
        rounds: Annotated[int, typer.Option(help="Interleaved rounds over all widths (spreads drift and thermal effects).")] = 5,
        idle_gap_ms: Annotated[float, typer.Option(help="Idle gap between runs in milliseconds (duty-cycle latency).")] = 0.0,
        budget_ms: Annotated[Optional[float], typer.Option(help="Latency budget in milliseconds: choose the most accurate width within it.  [default: none, measure only]")] = None,
        metric: Annotated[Metric, typer.Option(help="Latency statistic the budget applies to.")] = Metric.p95,
        search: Annotated[bool, typer.Option(help="Bisect the continuous width range for the widest width within --budget-ms.")] = False,
        accuracy: Annotated[Optional[Path], typer.Option(help="Accuracy table.  [default: accuracy.json beside the checkpoint]",
                                                         exists=True, dir_okay=False)] = None,
        power_modes: Annotated[Optional[str], typer.Option(help="Jetson nvpmodel mode ids to measure, e.g. 0,1,2.  [default: the current mode]")] = None,
        accept_new_host_key: Annotated[bool, typer.Option(help="Trust an unknown SSH host key on first contact (accept-new).")] = False,
        force: Annotated[bool, typer.Option(help="Re-export and re-measure points already in the lookup table.")] = False,
        remeasure: Annotated[int, typer.Option(help="Re-measurements (each twice as long) of the chosen pair and the next candidate while their 95% intervals straddle the budget.")] = 2,
        snap: Annotated[Snap, typer.Option(help="Channel divisor: 8 (the method's rule), 16 or 32 (hardware-friendly).")] = Snap.s8,
        outputs: Annotated[Optional[BenchOutputs], typer.Option(help="What is exported and timed: the backbone's features, or a task checkpoint's classifier (logits, probs).  [default: logits for a task checkpoint, else features]")] = None,
        measure_accuracy: Annotated[bool, typer.Option("--measure-accuracy", help="Measure the accuracy of each timed file that the accuracy table has no row for, on the checkpoint's data, before timing it.")] = False,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory for report.json, latency.csv, latency.png and lut.json.  "
                                                    "[default: ./us3l-bench, lookup table in ~/.cache/us3l/lut.json]")] = None,
        no_plot: Annotated[bool, typer.Option("--no-plot", help="Skip latency.png.")] = False,
        max_cov: Annotated[float, typer.Option(help="A row whose coefficient of variation (std/mean) exceeds this is re-measured once; still above it, the run is unstable.")] = 0.5,
        max_tail: Annotated[float, typer.Option(help="The same for a row's p95/p50 ratio.")] = 2.0,
        strict: Annotated[bool, typer.Option("--strict", help="Exit with code 3 when rows stay noisy after a re-measurement (a busy machine; the report is still written).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print report.json to stdout instead of the table.")] = False,
    ) -> None:
        """Measure latency per width on a device and pick the width for a latency budget.

        Widths are exported (ONNX) and measured in interleaved rounds; measured points are cached
        in a lookup table keyed by device fingerprint, runner, artifact, batch, precision and timing.
        Each row's accuracy is the one measured on the very file timed (by sha256), else unknown.
        """
        from us3l.benchmarks import parse_batches, parse_modes

        from ..api import bench

        with progress_bar("measuring", transient=True) as progress:
            result = bench(
                checkpoint, arch=arch, device=device, devices_file=devices_file, widths=widths,
                batches=parse_batches(batch), budget_ms=budget_ms, metric=metric.value, accuracy=accuracy, out=out,
                progress=progress, runner=value(runner), precision=precision, threads=threads, remeasure=remeasure,
                duration_s=duration, iterations=iterations, warmup_ms=warmup_ms, rounds=rounds,
                idle_gap_ms=idle_gap_ms, search=search, power_modes=parse_modes(power_modes),
                accept_new_host_key=accept_new_host_key, force=force, snap=int(snap.value), plot=not no_plot,
                max_cov=max_cov, max_tail=max_tail,
                outputs=value(outputs), measure_accuracy=measure_accuracy,
            )
        if as_json:
            print_json(result.report)
            if result.stability_note:
                err_console.print(f"warning: {result.stability_note}", highlight=False, markup=False, soft_wrap=True)
        else:
            render(result)
        if strict and result.unstable:
            err_console.print("error: --strict: the measurement is unstable (see the warning above); report.json "
                              "records it", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(3)
