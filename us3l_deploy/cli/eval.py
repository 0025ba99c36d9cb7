"""`us3l eval`: per-width accuracy of a checkpoint (BN recalibration, then kNN and/or linear probe)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .common import console, make_progress, user_errors


class Method(str, Enum):
    knn = "knn"
    linear = "linear"
    both = "both"


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def eval_command(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by 'us3l train' (or 'us3l import').")],
        widths: Annotated[str | None, typer.Option(
            help="Width list '0.25,0.5,1.0' or range 'start:stop:step' (default: 0.25/0.5/0.75/1.0 within the range).")] = None,
        method: Annotated[Method, typer.Option(help="kNN (fast), linear probe, or both.")] = Method.knn,
        as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON list of rows to stdout.")] = False,
        store_bn: Annotated[bool, typer.Option("--store-bn", help="Save the calibrated BN statistics in the checkpoint's bank.")] = False,
        data: Annotated[str | None, typer.Option(help="Dataset: digits, cifar10, cifar100, imagefolder (default: the checkpoint's).")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Data folder (CIFAR pickles or an image-folder tree).")] = None,
        image_size: Annotated[int | None, typer.Option(help="Image side in pixels (default: the dataset's).")] = None,
        calib_batches: Annotated[int, typer.Option(help="Training batches used to recalibrate BN at each width.")] = 50,
        batch_size: Annotated[int, typer.Option(help="Inference batch size.")] = 256,
        knn_k: Annotated[int | None, typer.Option(help="kNN neighbours (default: 20, or 200 on sets of >= 10k images).")] = None,
        linear_preset: Annotated[str, typer.Option(help="Linear-probe recipe: fast, or cifar (METHOD.md section 10).")] = "fast",
        device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    ) -> None:
        """Accuracy of each width: recalibrate BN on training data, then kNN and/or a linear probe.

        Writes accuracy.json next to the checkpoint (read by 'us3l bench').
        """
        from ..width import format_width
        from trainer.evaluate import EvalConfig, run_eval

        cfg = EvalConfig(
            checkpoint=str(checkpoint), widths=widths, method=method.value, dataset=data,
            data_root=str(data_root) if data_root is not None else None, image_size=image_size,
            calib_batches=calib_batches, batch_size=batch_size, knn_k=knn_k, linear_preset=linear_preset,
            store_bn=store_bn, device=device,
        )
        with make_progress(transient=True) as bar:
            task = bar.add_task("evaluating", total=None, status="")

            def progress(width: float, stage: str) -> None:
                bar.update(task, description=f"width {format_width(width)}", status=stage)
                if stage == "done":
                    bar.advance(task)

            result = run_eval(cfg, progress)
        if as_json:
            typer.echo(json.dumps(result.rows))
            return
        from rich.table import Table

        table = Table(title=f"{checkpoint.name}: accuracy per width ({result.protocol['dataset']['name']})")
        columns = ["width", "feature dim"] + [c for c in ("knn", "linear") if c in result.rows[0]]
        for col in columns:
            table.add_column(col, justify="right")
        for r in result.rows:
            cells = [format_width(r["width"]), str(r["feature_dim"])]
            cells += [f"{100 * r[c]:.2f} %" for c in ("knn", "linear") if c in r]
            table.add_row(*cells)
        console.print(table)
        console.print(f"wrote {result.accuracy_path}" + (" and the BN bank" if store_bn else ""))
