"""`us3l predict`: classify image files with an exported classifier, preprocessed as it records."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..core.threads import threads_help
from .choices import BadImage
from .common import console, err_console, example, print_json, user_errors

if TYPE_CHECKING:
    from ..api import PredictResult

EXAMPLE = "us3l predict exports/checkpoint_logits_w0.5.onnx photos/ --top-k 3 --json -o predictions.json"


def render(result: PredictResult) -> None:
    """One row per image (its path relative to a directory argument): the top-k classes.

    Image names are never broken inside a cell: when a name is too long for the terminal, the
    rows are numbered and the names listed below the table, one per line.
    """
    names = [p.name or str(p.image) for p in result.predictions]
    longest = max((len(n) for n in names), default=5)
    if longest + 36 <= console.width:  # room for the class columns beside the whole name
        console.print(_table(result, names))
        return
    console.print(_table(result, [f"#{i}" for i in range(1, len(names) + 1)]))
    for i, p in enumerate(result.predictions, 1):
        console.print(f"#{i} {p.image}", highlight=False, markup=False, soft_wrap=True)


def _table(result: PredictResult, labels: list[str]) -> Any:
    from rich.table import Table

    table = Table(title=f"{result.artifact.name} ({result.outputs})")
    table.add_column("image", no_wrap=True, min_width=max((len(label) for label in labels), default=5))
    table.add_column("top-1")
    table.add_column("prob", justify="right")
    table.add_column("next", overflow="fold")
    for label, p in zip(labels, result.predictions):
        rest = ", ".join(f"{c.name} {100 * c.prob:.1f} %" for c in p.top[1:])
        table.add_row(label, p.top[0].name, f"{100 * p.top[0].prob:.1f} %", rest)
    return table


def register(app: typer.Typer) -> None:
    @app.command("predict", epilog=example(EXAMPLE))
    @user_errors
    def command(
        artifact: Annotated[Path, typer.Argument(help="Classifier artifact from 'us3l export --outputs logits|probs' (.onnx, or a TensorRT .engine).")],
        images: Annotated[list[Path], typer.Argument(help="Image files or directories of images (searched recursively).")],
        top_k: Annotated[int, typer.Option(help="Classes reported per image.")] = 5,
        width: Annotated[float | None, typer.Option("--width", "-w", help="Width to run a switchable file (export --switchable) at; it must be one the file holds.  [default: the artifact's only width]")] = None,
        threads: Annotated[int, typer.Option(help=threads_help())] = 0,
        on_bad_image: Annotated[BadImage, typer.Option(help="An unreadable, truncated or decompression-bomb file: skip (one warning line, classify the rest) or fail (stop, exit 2).")] = BadImage.skip,
        as_json: Annotated[bool, typer.Option("--json", help="Print the predictions as JSON (to stdout, or to --out).")] = False,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the JSON predictions to this file (implies --json; written atomically).  [default: stdout]")] = None,
    ) -> None:
        """Run an exported classifier on images with exactly the preprocessing recorded in the artifact.

        Files are decoded as training and evaluation decode them (docs/files.md); an unreadable
        file is skipped with one warning line unless --on-bad-image fail.
        """
        from rich.markup import escape

        from ..api import predict

        result = predict(artifact, images, top_k=top_k, on_bad_image=on_bad_image.value, threads=threads, width=width)
        for s in result.skipped:
            err_console.print(f"[yellow]warning:[/] skipped {escape(s.name or str(s.image))}: {escape(s.reason)}",
                              markup=True, highlight=False, soft_wrap=True)
        if out is not None:
            from ..core.files import atomic_write_json
            from .common import jsonable

            atomic_write_json(out, jsonable(result.to_dict()))
            err_console.print(f"wrote {len(result.predictions)} prediction(s) to {escape(str(out))}",
                              highlight=False, soft_wrap=True)
            return
        if as_json:
            print_json(result.to_dict())
            return
        render(result)
