"""`us3l eval`: per-width accuracy of a checkpoint (BN recalibration, then kNN and/or linear probe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..core.threads import threads_help
from .choices import Dataset, EvalMethod, LinearPreset, value
from .common import console, example, progress_bar, user_errors

if TYPE_CHECKING:
    from ..api import EvalResult

EXAMPLE = "us3l eval runs/us3l/checkpoint.pt --widths 0.25:1.0:0.25 --method both"


def render(result: EvalResult) -> None:
    """The accuracy table (one row per width)."""
    from rich.table import Table

    from ..core.width import format_width

    table = Table(title=f"{result.checkpoint.name}: accuracy per width ({result.dataset})")
    for col in ("width", "precision", "outputs", "feature dim", *result.metrics):
        table.add_column(col, justify="right")
    for r in result.results:
        table.add_row(format_width(r.width), r.precision, r.outputs or "", str(r.feature_dim),
                      *("" if getattr(r, m) is None else f"{100 * getattr(r, m):.2f} %" for m in result.metrics))
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("eval", epilog=example(EXAMPLE))
    @user_errors
    def eval_command(
        checkpoint: Annotated[Path, typer.Argument(help="Checkpoint written by 'us3l train' or 'us3l import'.")],
        widths: Annotated[str | None, typer.Option("--widths", "--width",
            help="Widths: a list 0.25,0.5,1.0 or a range start:stop:step.  [default: 0.25,0.5,0.75,1.0 within the range]")] = None,
        method: Annotated[EvalMethod | None, typer.Option(help="top1 (a task checkpoint's classifier), knn (seconds), linear probe (slower) or both (the backbone's features).  [default: top1 for a task checkpoint, else knn]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON list of rows to stdout.")] = False,
        store_bn: Annotated[bool, typer.Option("--store-bn", help="Save the calibrated BN statistics in the checkpoint's bank (for export without data).")] = False,
        data: Annotated[Dataset | None, typer.Option(help="Dataset.  [default: the checkpoint's]")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Data folder (CIFAR pickles, Fashion-MNIST IDX files or an image-folder tree).  [default: the checkpoint's]")] = None,
        image_size: Annotated[int | None, typer.Option(help="Square image side in pixels.  [default: the dataset's]")] = None,
        calib_batches: Annotated[int, typer.Option(help="Training batches (of --batch-size images) to recalibrate BN at each width.")] = 50,
        batch_size: Annotated[int, typer.Option(help="Images per inference and calibration batch.")] = 256,
        knn_k: Annotated[int | None, typer.Option(help="kNN neighbours.  [default: 20, or 200 on sets of 10k+ images]")] = None,
        linear_preset: Annotated[LinearPreset, typer.Option(help="Linear-probe recipe: fast, or cifar (docs/method.md section 11, 100 epochs).")] = LinearPreset.fast,
        device: Annotated[str, typer.Option(help="Torch device: cpu, cuda or cuda:N.")] = "cpu",
        workers: Annotated[int | None, typer.Option(help="Processes decoding image files (0: in this process).  [default: CPUs - 1, at most 14]")] = None,
        artifact: Annotated[list[Path] | None, typer.Option(help="Exported ONNX file of this checkpoint, measured in ONNX Runtime; repeatable; its row records the file's sha256, outputs, precision (a switchable file: each of --widths, default all).  [default: none]",
                                                              exists=True, dir_okay=False)] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Accuracy table to write ('us3l bench --accuracy' reads it).  [default: accuracy.json beside the checkpoint, where bench looks]")] = None,
        threads: Annotated[int, typer.Option(help=threads_help())] = 0,
    ) -> None:
        """Accuracy of each width: a task checkpoint's classifier top-1, or kNN / a linear probe on features.

        Features: BN recalibrated on training data at each width. Merges its rows into accuracy.json
        next to the checkpoint, or --out (other rows are kept); 'us3l bench' joins them by the exact file it timed.
        """
        from ..api import evaluate

        with progress_bar("evaluating", transient=True) as progress:
            result = evaluate(checkpoint, widths, method=value(method), dataset=value(data), data_root=data_root,
                              image_size=image_size, calib_batches=calib_batches, batch_size=batch_size, knn_k=knn_k,
                              linear_preset=linear_preset.value, store_bn=store_bn, device=device, progress=progress,
                              artifacts=tuple(artifact or ()), workers=workers, out=out, threads=threads)
        if as_json:
            typer.echo(json.dumps(result.to_rows()))
            return
        render(result)
        console.print(f"wrote {result.accuracy_file}" + (" and the BN bank" if store_bn else ""))
        if result.classifier is not None:
            console.print(f"classifier (the linear probes, per width): {result.classifier}")
