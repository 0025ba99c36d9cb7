"""`us3l export`: slice a checkpoint (or an untrained architecture) to widths and export them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ..core.threads import threads_help
from .choices import Calibration, Format, Int8Recipe, OnnxExporter, Outputs, Precision, Snap, value
from .common import example, print_json, user_errors

if TYPE_CHECKING:
    from us3l.exporters import ExportResult

EXAMPLE = "us3l export runs/us3l/checkpoint.pt --widths 0.25:1.0:0.25 --precision int8 --out runs/us3l/onnx"


def _channels_summary(channels: dict[str, int]) -> str:
    values = sorted(set(channels.values()))
    return "/".join(map(str, values)) if len(values) <= 6 else f"{values[0]}..{values[-1]} ({len(values)} sizes)"


def render(result: ExportResult) -> None:
    """One row per artifact: width, aliases, channels, cost, gate result, file.

    Columns with nothing to say (no aliases, nothing cached, one precision) are left out. File
    names (relative to the output folder) are never broken inside a cell: when the whole names do
    not fit the terminal, the cells show what tells the files apart and one line below the table
    gives the shared part, so the table stays whole in 80 columns.
    """
    from .common import console

    if len(result.artifacts) == 1 and result.artifacts[0].switchable:
        render_switchable(result)
        return
    names = [a.path.name for a in result.artifacts]
    table = _table(result, names)
    natural = console.measure(table, options=console.options.update(max_width=10_000)).maximum
    if natural <= console.width or len(names) < 2:
        console.print(table)
        return
    head, tail = _shared(names)
    console.print(_table(result, [n[len(head):len(n) - len(tail)] for n in names], "file *"))
    console.print(f"files: {result.out_dir}/{head}{{{','.join(n[len(head):len(n) - len(tail)] for n in names)}}}{tail}",
                  highlight=False, markup=False, soft_wrap=True)


def _shared(names: list[str]) -> tuple[str, str]:
    """The longest common prefix and suffix of the names (ending/starting at a separator)."""
    import os.path

    head = os.path.commonprefix(names)
    tail = os.path.commonprefix([n[::-1] for n in names])[::-1]
    cut = max((head.rfind(c) for c in "_.-"), default=-1)
    head = head[:cut + 1] if cut >= 0 else ""
    shortest = min(len(n) for n in names)
    tail = tail[max(0, len(tail) - (shortest - len(head))):]
    cut = min((i for i, c in enumerate(tail) if c in "_.-"), default=len(tail))
    return head, tail[cut:]


def _table(result: ExportResult, files: list[str], file_header: str = "file") -> Any:
    from rich.table import Table

    from ..core.width import format_width

    table = Table(title=f"{len(result.artifacts)} artifact(s) in {result.out_dir} ({result.seconds:.1f}s)")
    reduced = any(Precision.parse(a.precision).reduced for a in result.artifacts)
    rows = [{
        "width": format_width(a.width),
        "prec": a.precision,
        "aliases": ",".join(format_width(x) for x in a.aliases),
        "channels": _channels_summary(a.channels),
        "MMACs": f"{a.macs / 1e6:.1f}",
        "Mparams": f"{a.params / 1e6:.2f}",
        "cosine" if reduced else "max err": (f"{a.parity['mean_cosine']:.4f}" if "mean_cosine" in a.parity
                                             else f"{a.parity['max_abs_err']:.2e}"),
        "file": f,
        "note": "cached" if a.cached else "",
    } for a, f in zip(result.artifacts, files)]
    optional = {"prec": len({r["prec"] for r in rows}) > 1, "aliases": any(r["aliases"] for r in rows),
                "note": any(r["note"] for r in rows)}
    columns = [c for c in rows[0] if optional.get(c, True)] if rows else []
    for col in columns:
        if col == "file":
            table.add_column(file_header, no_wrap=True, min_width=max(len(r["file"]) for r in rows))
            continue
        wraps = col in ("channels", "aliases")
        table.add_column(col, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis")
    for r in rows:
        table.add_row(*(r[c] for c in columns))
    return table


def render_switchable(result: ExportResult) -> None:
    """One row per width index of a switchable file: what each index runs and how it passed."""
    from rich.table import Table

    from ..core.width import format_width
    from .common import console

    art = result.artifacts[0]
    table = Table(title=f"{art.path.name}: {len(art.switchable or ())} widths in one file, chosen by width_index "
                        f"({result.seconds:.1f}s{', cached' if art.cached else ''})")
    for col in ("index", "width", "channels", "MMACs", "accuracy", "gate"):
        table.add_column(col, overflow="fold")
    for row in art.switchable or ():
        acc = row.get("accuracy") or {}
        gate = row.get("parity") or {}
        table.add_row(str(row["index"]), ",".join(format_width(w) for w in [row["width"], *row.get("aliases", [])]),
                      _channels_summary(row.get("channels") or {}), f"{row['macs'] / 1e6:.1f}",
                      ", ".join(f"{k} {100 * v:.2f} %" for k, v in acc.items()) or "unknown",
                      f"cos {gate['mean_cosine']:.4f}" if "mean_cosine" in gate
                      else f"max err {gate.get('max_abs_err', float('nan')):.2e}")
    console.print(table)


def register(app: typer.Typer) -> None:
    @app.command("export", epilog=example(EXAMPLE))
    @user_errors
    def command(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint file or packed model directory (omit it and give --arch for an untrained network), or a switchable .onnx file to take widths out of.")] = None,
        arch: Annotated[Optional[str], typer.Option(help="Untrained architecture instead of a checkpoint, for latency planning (random weights).  [default: the checkpoint's]")] = None,
        width: Annotated[str, typer.Option("--widths", "--width", "-w", help="Width 0.35, a list 0.25,0.5 or a range 0.25:1.0:0.05.")] = "1.0",
        fmt: Annotated[Format, typer.Option("--format", "-f", help="onnx; trt (alias engine): a TensorRT engine, built on the GPU that runs it; pt2: torch.export.")] = Format.onnx,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (created only when every width passed).")] = Path("exports"),
        batch: Annotated[Optional[str], typer.Option(help="Fixed batch size in images (one value; bench takes a list).  [default: a dynamic batch axis]")] = None,
        opset: Annotated[int, typer.Option(help="ONNX opset (17 loads in TensorRT 8.5/JetPack 5 through TensorRT 11).")] = 17,
        snap: Annotated[Snap, typer.Option(help="Channel divisor: 8 (the method's rule), 16 or 32 (hardware-friendly).")] = Snap.s8,
        precision: Annotated[Precision, typer.Option(help="Numeric precision; with --format onnx, fp16 is ONNX Runtime's FP16 converter and int8 static INT8 (QDQ, per-channel) calibrated on real images.")] = Precision.FP32,
        calibration: Annotated[Calibration, typer.Option(help="INT8 calibration method.")] = Calibration.minmax,
        min_cosine: Annotated[Optional[float], typer.Option(help="fp16/int8 gate: least mean cosine similarity to FP32 features on held-out images.  [default: fp16 0.999, int8 0.95]")] = None,
        calib_data: Annotated[Optional[str], typer.Option(help="BN/INT8 calibration images: .npy/.pt N x C x H x W, or a dataset name[:root].  [default: the checkpoint's training data]")] = None,
        atol: Annotated[Optional[float], typer.Option("--atol", help="Parity gate absolute tolerance.  [default: per precision; fp32 1e-4]")] = None,
        rtol: Annotated[Optional[float], typer.Option(help="Parity gate relative tolerance (times max |reference|).  [default: per precision]")] = None,
        include_head: Annotated[Optional[Path], typer.Option(help="Linear probe .pt with weight and bias, appended after the features.  [default: none, features only]")] = None,
        image_size: Annotated[Optional[int], typer.Option(help="Square input side in pixels.  [default: the architecture's]")] = None,
        name: Annotated[Optional[str], typer.Option(help="Artifact file-name prefix.  [default: checkpoint stem or arch]")] = None,
        simplify: Annotated[bool, typer.Option(help="Simplify the ONNX graph with onnxsim.")] = True,
        onnx_exporter: Annotated[Optional[OnnxExporter], typer.Option(help="torch's ONNX exporter: dynamo (supported) or torchscript (legacy, ~2-30x faster).  [default: $US3L_ONNX_EXPORTER, else dynamo]")] = None,
        outputs: Annotated[Outputs, typer.Option(help="What the artifact outputs: features; logits or probs (the task checkpoint's classifier); stages (multi-scale maps C2..C5).")] = Outputs.features,
        as_json: Annotated[bool, typer.Option("--json", help="Print the artifacts as JSON instead of a table.")] = False,
        force: Annotated[bool, typer.Option(help="Rebuild and overwrite artifacts even when the cache matches.")] = False,
        switchable: Annotated[bool, typer.Option(help="One ONNX file holding every width, chosen at run time by its int64 width_index input (fp32, or fp16 when it holds the gate).")] = False,
        substitute: Annotated[bool, typer.Option(help="Ladders of 2+ widths: translate one width and derive the others from its graph (fall back per width, with the reason in the sidecar).")] = True,
        int8_recipe: Annotated[Int8Recipe, typer.Option(help="ONNX INT8: auto chooses each width's recipe on held-out images (calibration, then head/stem/last block kept FP32); fixed quantizes every layer.")] = Int8Recipe.auto,
        int8_min_agreement: Annotated[float, typer.Option(help="ONNX INT8 auto recipe: least top-1 agreement with FP32 on held-out images (classifiers).")] = 0.99,
        threads: Annotated[int, typer.Option(help=threads_help())] = 0,
    ) -> None:
        """Export widths of a checkpoint to ONNX / TensorRT / torch.export (.pt2), each verified against PyTorch.

        Widths that slice to the same network are exported once (listed as aliases); an identical
        second run reuses the files.
        """
        from us3l.benchmarks import parse_batches

        from ..api import export
        from ..core.errors import ConfigError
        from .common import progress_bar

        batches = parse_batches(batch) if batch is not None else ()
        if len(batches) > 1:
            raise ConfigError(f"--batch {batch!r}: an artifact has one fixed batch size; give one value, "
                              "or none for a dynamic batch axis (us3l bench --batch takes a list)")
        with progress_bar("exporting", transient=True, lazy=True) as progress:  # drawn from the first width
            result = export(checkpoint, width, format=fmt.value, out=out, arch=arch, progress=progress, name=name,
                            batch=batches[0] if batches else None, opset=opset, snap=int(snap.value), precision=precision,
                            calib_data=calib_data, atol=atol, rtol=rtol, simplify=simplify, calibration=calibration.value,
                            **({"onnx_exporter": value(onnx_exporter)} if onnx_exporter else {}),
                            min_cosine=min_cosine,
                            include_head=str(include_head) if include_head else None, image_size=image_size,
                            force=force, threads=threads,
                            **({"outputs": outputs.value} if outputs is not Outputs.features else {}),
                            **({"switchable": True} if switchable else {}), **({} if substitute else {"substitute": False}),
                            **({} if int8_recipe is Int8Recipe.auto else {"int8_recipe": int8_recipe.value}),
                            **({} if int8_min_agreement == 0.99 else {"int8_min_agreement": int8_min_agreement}))
        if as_json:
            print_json({"out_dir": result.out_dir, "seconds": result.seconds, "artifacts": result.artifacts})
        else:
            render(result)
