"""`us3l predict`: classify image files with an exported classifier, preprocessed as it records."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from .common import console, example, print_json, user_errors

if TYPE_CHECKING:
    from ..api import PredictResult

EXAMPLE = "us3l predict exports/checkpoint_logits_w0.5.onnx digit.png --top-k 3"


def render(result: PredictResult) -> None:
    """One row per image: the top-k classes with their probabilities."""
    from rich.table import Table

    table = Table(title=f"{result.artifact.name} ({result.outputs})")
    table.add_column("image", overflow="fold")
    table.add_column("top-1")
    table.add_column("prob", justify="right")
    table.add_column("next", overflow="fold")
    for p in result.predictions:
        rest = ", ".join(f"{c.name} {100 * c.prob:.1f} %" for c in p.top[1:])
        table.add_row(p.image.name, p.top[0].name, f"{100 * p.top[0].prob:.1f} %", rest)
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("predict", epilog=example(EXAMPLE))
    @user_errors
    def command(
        artifact: Annotated[Path, typer.Argument(help="Classifier artifact from 'us3l export --outputs logits|probs' (.onnx, or a TensorRT .engine).")],
        images: Annotated[list[Path], typer.Argument(help="Image files or directories of images.")],
        top_k: Annotated[int, typer.Option(help="Classes reported per image.")] = 5,
        width: Annotated[Optional[float], typer.Option("--width", "-w", help="Width to run a switchable file (export --switchable) at; it must be one the file holds.  [default: the artifact's only width]")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON.")] = False,
    ) -> None:
        """Run an exported classifier on images with exactly the preprocessing recorded in the artifact."""
        from ..api import predict

        result = predict(artifact, images, top_k=top_k, width=width)
        if as_json:
            print_json(result.to_dict())
            return
        render(result)
