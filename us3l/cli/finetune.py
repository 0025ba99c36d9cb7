"""`us3l finetune`: universally slimmable supervised fine-tuning (backbone + one head per width, or a shared head)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..core.threads import threads_help
from .choices import Augment, BadImage, Dataset, Head, value
from .common import console, example, print_json, progress_bar, user_errors

if TYPE_CHECKING:
    from ..api import FinetuneResult

EXAMPLE = "us3l finetune runs/us3l/checkpoint.pt --epochs 30 --out runs/us3l/finetune"


def render(result: FinetuneResult) -> None:
    """Top-1 per width."""
    from rich.markup import escape
    from rich.table import Table

    from ..core.width import format_width

    table = Table(title=f"{result.checkpoint}: top-1 per width ({result.seconds:.0f}s)")
    for col in ("width", "feature dim", "head", "top-1"):
        table.add_column(col, justify="right")
    for r in result.results:
        table.add_row(format_width(r.width), str(r.feature_dim), r.head or "shared", f"{100 * (r.top1 or 0):.2f} %")
    console.print(table)
    console.print(f"wrote {result.checkpoint} and {result.accuracy_file}")
    for line in result.notices:
        console.print(f"[yellow]notice:[/] {escape(line)}")


def register(app: typer.Typer) -> None:
    @app.command("finetune", epilog=example(EXAMPLE))
    @user_errors
    def command(
        checkpoint: Annotated[Path, typer.Argument(help="SSL checkpoint file or packed model directory to fine-tune.")],
        recipe: Annotated[str | None, typer.Option(help="Preset: digits, fashion_mnist, cifar, or paper (the reference's per-width fine-tuning: one --train-width per run, 50 epochs, SGD 0.01, steps at 30/40).  [default: from the checkpoint's dataset]")] = None,
        data: Annotated[Dataset | None, typer.Option(help="Labelled dataset.  [default: the checkpoint's]")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Dataset folder (CIFAR pickles, Fashion-MNIST IDX files or train/ + val/ class folders).  [default: the checkpoint's]")] = None,
        image_size: Annotated[int | None, typer.Option(help="Square input side in pixels.  [default: the dataset's]")] = None,
        head: Annotated[Head | None, typer.Option(help="Classifier: per-width (one linear layer per --widths entry; a width in between uses the nearer head) or shared (one input-slimmed layer).  [default: per-width]")] = None,
        freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train only the classifier (per-width: one linear probe per width on standardised eval-mode features, the standardisation folded into it).")] = False,
        train_width: Annotated[float | None, typer.Option(help="Fine-tune this one width only (a network of that width; the paper preset needs it).  [default: every width]")] = None,
        epochs: Annotated[int | None, typer.Option(help="Epochs.  [default: the recipe's; digits 30]")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per step.  [default: the recipe's; digits 64]")] = None,
        lr: Annotated[float | None, typer.Option(help="SGD learning rate, cosine-decayed per step (x4 with --freeze-backbone).  [default: the recipe's; digits 0.05]")] = None,
        weight_decay: Annotated[float | None, typer.Option(help="SGD weight decay.  [default: the recipe's; 5e-4]")] = None,
        label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing of the max width's cross-entropy, in [0, 1).  [default: the recipe's; 0.1, or 0 with --freeze-backbone and per-width heads]")] = None,
        num_widths: Annotated[int | None, typer.Option(help="Widths per step: max, min and N-2 random (sandwich rule).  [default: 4]")] = None,
        distill: Annotated[bool, typer.Option("--distill/--no-distill", help="Sub-widths learn from the max width's soft predictions (in-place distillation), else from the labels.")] = True,
        widths: Annotated[str | None, typer.Option("--widths", help="Evaluation and BN-bank widths (one head each with --head per-width): a list or start:stop:step.  [default: 0.25,0.5,0.75,1.0 within the range]")] = None,
        milestones: Annotated[str | None, typer.Option(help="Step schedule instead of cosine: lr x0.1 at each of these epochs, e.g. 60,80.  [default: the recipe's; paper 30,40]")] = None,
        augment: Annotated[Augment | None, typer.Option(help="Augmentation: auto (crop for image files, shift for in-memory sets, none for frozen per-width heads), crop (random resized crop + flip), shift (random translation) or none.  [default: auto]")] = None,
        crop_scale_min: Annotated[float | None, typer.Option(help="Smallest crop area fraction of --augment crop, in (0, 1].  [default: 0.25]")] = None,
        workers: Annotated[int | None, typer.Option(help="Processes decoding and cropping image files (0: in this process).  [default: CPUs - 1, at most 14]")] = None,
        on_bad_image: Annotated[BadImage | None, typer.Option(help="An unreadable, truncated or decompression-bomb image: skip (count, warn) or fail (stop, exit 2).  [default: skip]")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder for checkpoint.pt and accuracy.json.  [default: finetune/ (linear/ when frozen) beside the checkpoint]")] = None,
        device: Annotated[str | None, typer.Option(help="Torch device: cpu, cuda or cuda:N.  [default: cpu]")] = None,
        seed: Annotated[int | None, typer.Option(help="Random seed.  [default: 0]")] = None,
        max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap steps per epoch (smoke runs).  [default: no cap]")] = None,
        threads: Annotated[int, typer.Option(help=threads_help())] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    ) -> None:
        """Fine-tune a universally slimmable checkpoint on labelled data: one task checkpoint for every width.

        Sandwich rule with in-place distillation; BN recalibrated per width afterwards; writes
        checkpoint.pt (backbone, one head per width or a shared head, class names, normalisation) and
        accuracy.json (top-1 per width).
        """
        from ..api import finetune
        from ..core.errors import ConfigError

        steps = None
        if milestones is not None:
            try:
                steps = tuple(int(m) for m in milestones.split(",") if m.strip())
            except ValueError:
                raise ConfigError(f"--milestones {milestones!r} is invalid; valid: epochs separated by commas, e.g. 60,80") from None
        with progress_bar("fine-tuning", transient=True) as progress:
            result = finetune(checkpoint, recipe=recipe, progress=progress, dataset=value(data),
                              data_root=str(data_root) if data_root else None, image_size=image_size,
                              freeze_backbone=freeze_backbone or None, head=value(head),
                              train_width=train_width, epochs=epochs, batch_size=batch_size, lr=lr,
                              weight_decay=weight_decay, label_smoothing=label_smoothing, num_widths=num_widths,
                              distill=None if distill else False, widths=widths, augment=value(augment),
                              crop_scale_min=crop_scale_min, workers=workers,
                              on_bad_image=value(on_bad_image),
                              out_dir=str(out) if out else None, device=device, seed=seed,
                              max_steps_per_epoch=max_steps_per_epoch, milestones=steps,
                              schedule="step" if steps else None, threads=threads)
        if as_json:
            print_json(result)
            return
        render(result)
