"""`us3l bench`: latency per width on a device, cached lookup table, width choice for a budget."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import console, make_progress, user_errors


class Metric(str, Enum):
    p50 = "p50"
    p90 = "p90"
    p95 = "p95"
    p99 = "p99"
    mean = "mean"


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


def register(app: typer.Typer) -> None:
    @app.command("bench")
    @user_errors
    def command(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="us3l checkpoint (omit with --arch).", exists=True,
                                                             dir_okay=False)] = None,
        arch: Annotated[Optional[str], typer.Option(help="Benchmark an untrained architecture (latency planning).")] = None,
        device: Annotated[str, typer.Option(help="cpu, cuda, jetson or a profile from us3l-devices.toml.")] = "cpu",
        devices_file: Annotated[Optional[Path], typer.Option(help="Device profiles TOML (default: ./us3l-devices.toml, "
                                                             "then ~/.config/us3l/devices.toml).")] = None,
        widths: Annotated[Optional[str], typer.Option(help="Widths: list '0.25,0.5' or range '0.25:1.0:0.05' "
                                                      "(default: the checkpoint's ladder).")] = None,
        batch: Annotated[str, typer.Option(help="Batch sizes, e.g. '1,8,32'.")] = "1",
        runner: Annotated[Optional[str], typer.Option(help="torch, onnxruntime, tensorrt, trtexec (default: device's).")] = None,
        precision: Annotated[Optional[Precision], typer.Option(help="Precision (default: device's).")] = None,
        threads: Annotated[Optional[int], typer.Option(help="Intra-op threads.")] = None,
        duration: Annotated[float, typer.Option(help="Timed seconds per width and batch.")] = 1.0,
        iterations: Annotated[Optional[int], typer.Option(help="Fixed timed runs per width and batch "
                                                          "(overrides --duration).")] = None,
        warmup_ms: Annotated[float, typer.Option(help="Time-based warm-up per input shape (ms).")] = 200.0,
        rounds: Annotated[int, typer.Option(help="Interleaved rounds across widths.")] = 5,
        idle_gap_ms: Annotated[float, typer.Option(help="Idle gap between runs (duty-cycle latency).")] = 0.0,
        budget_ms: Annotated[Optional[float], typer.Option(help="Latency budget in ms: choose a width.")] = None,
        metric: Annotated[Metric, typer.Option(help="Statistic the budget applies to.")] = Metric.p95,
        search: Annotated[bool, typer.Option(help="Bisect the continuous width range for the widest width "
                                             "under budget.")] = False,
        accuracy: Annotated[Optional[Path], typer.Option(help="Accuracy table (default: accuracy.json beside the "
                                                         "checkpoint).", exists=True, dir_okay=False)] = None,
        power_modes: Annotated[Optional[str], typer.Option(help="Jetson nvpmodel modes to measure, e.g. '0,1,2'.")] = None,
        accept_new_host_key: Annotated[bool, typer.Option(help="Trust an unknown ssh host key on first contact.")] = False,
        force: Annotated[bool, typer.Option(help="Re-export and re-measure cached points.")] = False,
        snap: Annotated[int, typer.Option(help="Channel divisor (8; 16/32 snap channels for hardware).")] = 8,
        out: Annotated[Optional[Path], typer.Option(help="Output dir (default ./us3l-bench, cache in "
                                                    "~/.cache/us3l/lut.json).")] = None,
        no_plot: Annotated[bool, typer.Option("--no-plot", help="Skip the PNG.")] = False,
    ) -> None:
        """Measure latency per width on a device and pick the width for a latency budget."""
        from benchmarks import BenchConfig, parse_batches, parse_modes, run_bench
        from benchmarks.report import render_table
        from us3l_deploy.width import format_width

        cfg = BenchConfig(
            checkpoint=checkpoint, arch=arch, device=device, devices_file=devices_file, widths=widths,
            batches=parse_batches(batch), runner=runner, precision=precision.value if precision else None,
            threads=threads, duration_s=duration, iterations=iterations, warmup_ms=warmup_ms, rounds=rounds,
            idle_gap_ms=idle_gap_ms, budget_ms=budget_ms, metric=metric.value, search=search, accuracy=accuracy,
            power_modes=parse_modes(power_modes), accept_new_host_key=accept_new_host_key, force=force,
            out_dir=out, snap=snap, plot=not no_plot,
        )
        with make_progress(transient=True) as bar:
            task = bar.add_task("measuring", total=None, status="")

            def progress(done: int, total: int, desc: str) -> None:
                bar.update(task, completed=done, total=total, status=desc)

            result = run_bench(cfg, progress=progress)
        report = result.report
        console.print(render_table(report))
        console.print(f"report: {result.paths['report']}  csv: {result.paths['csv']}"
                      + (f"  plot: {result.paths['plot']}" if "plot" in result.paths else ""))
        if budget_ms is not None:
            chosen, choice = report.get("chosen"), report["choice"]
            if chosen:
                console.print(f"[bold green]chosen width {format_width(chosen['width'])}[/]: "
                              f"{choice['metric']} {chosen['latency_ms']:.3f} ms <= {budget_ms:g} ms ({choice['reason']})")
            else:
                console.print(f"[bold red]no width fits[/]: {choice['reason']}")
