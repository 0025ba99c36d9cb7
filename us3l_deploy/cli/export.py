"""`us3l export`: slice a checkpoint (or an untrained architecture) to widths and export them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import user_errors


def _channels_summary(channels: dict[str, int]) -> str:
    values = sorted(set(channels.values()))
    return "/".join(map(str, values)) if len(values) <= 6 else f"{values[0]}..{values[-1]} ({len(values)} sizes)"


def register(app: typer.Typer) -> None:
    @app.command("export")
    @user_errors
    def command(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint file (omit with --arch).")] = None,
        arch: Annotated[Optional[str], typer.Option(help="Untrained architecture (latency planning).")] = None,
        width: Annotated[str, typer.Option("--width", "-w", help="0.35, a list 0.25,0.5 or a range 0.25:1.0:0.05.")] = "1.0",
        fmt: Annotated[str, typer.Option("--format", "-f", help="onnx | trt | torchscript.")] = "onnx",
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created on success).")] = Path("exports"),
        batch: Annotated[Optional[int], typer.Option(help="Fixed batch size (default: dynamic batch axis).")] = None,
        opset: Annotated[int, typer.Option(help="ONNX opset (17: TensorRT 8.5/JetPack 5 .. TensorRT 11).")] = 17,
        snap: Annotated[int, typer.Option(help="Channel divisor: 8 (the method), 16 or 32.")] = 8,
        precision: Annotated[str, typer.Option(help="fp32 | fp16 | int8 (reduced precisions: trt).")] = "fp32",
        calib_data: Annotated[Optional[str], typer.Option(help="Images (.npy/.pt NCHW) or dataset name[:root].")] = None,
        tolerance: Annotated[Optional[float], typer.Option(help="Parity atol (default per precision, fp32 1e-4).")] = None,
        rtol: Annotated[Optional[float], typer.Option(help="Parity rtol (default per precision).")] = None,
        include_head: Annotated[Optional[Path], typer.Option(help="Linear probe .pt {weight, bias} appended.")] = None,
        input_size: Annotated[Optional[int], typer.Option(help="Square input side (default: the architecture's).")] = None,
        name: Annotated[Optional[str], typer.Option(help="Artifact name prefix.")] = None,
        simplify: Annotated[bool, typer.Option(help="Simplify with onnxsim.")] = True,
        force: Annotated[bool, typer.Option(help="Rebuild and overwrite existing artifacts.")] = False,
    ) -> None:
        """Export widths of a checkpoint to ONNX / TensorRT / TorchScript, each verified against PyTorch."""
        from exporters import ExportConfig, export

        from .common import console, make_progress

        cfg = ExportConfig(
            checkpoint=str(checkpoint) if checkpoint else None, arch=arch, widths=width, format=fmt, out_dir=str(out),
            name=name, batch=batch, opset=opset, snap=snap, precision=precision, calib_data=calib_data,
            atol=tolerance, rtol=rtol, simplify=simplify, include_head=str(include_head) if include_head else None,
            input_size=input_size, force=force,
        )
        bar = make_progress(transient=True)
        task = bar.add_task("export", total=None, status="")

        def progress(done: int, total: int, message: str) -> None:
            if not bar.live.is_started:  # started on the first width, so early errors stay one line
                bar.start()
            bar.update(task, completed=done, total=total, status=message)

        try:
            result = export(cfg, progress)
        finally:
            if bar.live.is_started:
                bar.stop()
        from rich.table import Table

        table = Table(title=f"{len(result.artifacts)} artifact(s) in {result.out_dir} ({result.seconds:.1f}s)")
        for col in ("width", "aliases", "channels", "MMACs", "Mparams", "max err"):
            table.add_column(col, no_wrap=col != "channels")
        table.add_column("file", overflow="fold")
        table.add_column("note")
        for a in result.artifacts:
            table.add_row(f"{a.width:g}", ",".join(f"{x:g}" for x in a.aliases), _channels_summary(a.channels),
                          f"{a.macs / 1e6:.1f}", f"{a.params / 1e6:.2f}", f"{a.parity['max_abs_err']:.2e}", a.path.name,
                          "cached" if a.cached else "")
        console.print(table)
