"""`us3l train`: self-supervised US3L training of one universally slimmable checkpoint.

With no arguments it trains the embedded digits default (``us_resnet_mini``, a few minutes on a
laptop CPU). ``--recipe`` picks a paper preset (docs/method.md §12); any flag overrides the preset.
Multi-GPU / multi-node: ``torchrun --nproc_per_node=N -m us3l.cli.main train ...``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..core.threads import threads_help
from .choices import SSL, Augmentation, BadImage, Dataset, TrainMethod, value
from .common import console, err_console, example, is_main_process, print_json, progress_bar, user_errors

if TYPE_CHECKING:
    from ..api import TrainResult

EXAMPLE = "us3l train --epochs 5 --out runs/digits5"


def dataset_label(cfg: object) -> str:
    """The dataset as the progress bar names it: ``imagefolder:NAME`` for image files."""
    data, root = getattr(cfg, "data"), getattr(cfg, "data_root")
    return f"{data}:{Path(root).name}" if data == "imagefolder" and root else str(data)


def describe_run(cfg: object) -> str:
    """The start line: dataset, image size in use (and where it comes from), loader processes."""
    from ..core.data import DatasetSpec, default_image_size

    size = default_image_size(DatasetSpec(getattr(cfg, "data"), getattr(cfg, "data_root"), getattr(cfg, "image_size")))
    origin = "set" if getattr(cfg, "image_size") is not None else "the dataset's default; --image-size to change"
    line = f"training {getattr(cfg, 'arch')} on {dataset_label(cfg)} at {size}x{size} px ({origin})"
    if getattr(cfg, "data") == "imagefolder":
        from us3l.trainer.pipeline import resolve_workers

        line += f", {resolve_workers(getattr(cfg, 'workers'))} loader process(es)"
    return line


def render(result: TrainResult) -> None:
    """The collapse table of the last epoch and the loss/throughput line."""
    from rich.table import Table

    from ..core.width import format_width

    if not result.history:
        return
    if result.trained_epochs == 0:  # a finished run resumed: nothing was trained (the notice said so)
        return
    table = Table(title=f"training summary (epoch {result.epochs})")
    for col in ("width", "std*sqrt(d)", "effective rank", "collapsed"):
        table.add_column(col, justify="right")
    for s in result.collapse:
        table.add_row(format_width(s.width), f"{s.std_ratio:.3f}", f"{s.eff_rank:.1f}",
                      "[red]yes[/]" if s.collapsed else "no")
    console.print(table)
    nan = float("nan")
    console.print(f"loss (max width) {result.loss if result.loss is not None else nan:.4f}, "
                  f"sub-width loss {result.distill_loss if result.distill_loss is not None else nan:.4f}, "
                  f"{result.images_per_s or 0:.0f} img/s, {training_time(result)}")


def training_time(result: TrainResult) -> str:
    """``12 s of training`` for a new run; this invocation's epochs and time apart from the total on resume."""
    now = result.run_seconds if result.run_seconds is not None else result.seconds
    if result.start_epoch == 0:
        return f"{now:.0f} s of training"
    return (f"{now:.0f} s of training now (epochs {result.start_epoch + 1}-{result.epochs}), "
            f"{result.seconds:.0f} s over all {result.epochs} epochs")


def register(app: typer.Typer) -> None:
    @app.command("train", epilog=example(EXAMPLE))
    @user_errors
    def command(
        recipe: Annotated[str | None, typer.Option(help="Preset: digits (CPU default) or a paper recipe; see --list-recipes.  [default: digits, or the --config file's recipe]")] = None,
        config: Annotated[Path | None, typer.Option(help="TOML file with any training settings (the format --print-config writes); flags override it.  [default: none]")] = None,
        set_: Annotated[list[str] | None, typer.Option("--set", help="Override any setting: key=value (TOML value), repeatable; e.g. --set prefetch=4.  [default: none]")] = None,
        print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved configuration as TOML and exit.")] = False,
        arch: Annotated[str | None, typer.Option(help="Backbone architecture name.  [default: the recipe's]")] = None,
        data: Annotated[Dataset | None, typer.Option(help="Dataset (imagefolder: train/ + val/ class folders under --data-root).  [default: the recipe's]")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Dataset folder (CIFAR pickles, Fashion-MNIST IDX files or train/ + val/ class folders); not for digits.  [default: the recipe's; fashion-mnist /usr/share/datasets/fashion-mnist]")] = None,
        image_size: Annotated[int | None, typer.Option(help="Square input side in pixels.  [default: the dataset's: 16 digits, 28 fashion-mnist, 32 CIFAR, 224 folders]")] = None,
        epochs: Annotated[int | None, typer.Option(help="Training epochs.  [default: the recipe's; digits 13]")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Images per batch per process (global = this x processes; the ViT recipe's is global).  [default: the recipe's]")] = None,
        lr: Annotated[float | None, typer.Option(help="Base learning rate, cosine-decayed per epoch.  [default: the recipe's]")] = None,
        method: Annotated[TrainMethod | None, typer.Option(help="us3l; naive (the reference's naive US-Net + SimCLR: sub-widths distilled to the online full width); naive-contrastive (SimCLR at every width); single (one width).  [default: us3l]")] = None,
        augmentation: Annotated[Augmentation | None, typer.Option(help="SSL views: color (MoCo v2), gray (views that exist in grey images) or auto (from the data's channels; recorded in config.toml).  [default: auto]")] = None,
        eval_every: Annotated[int | None, typer.Option(help="Every N epochs, a kNN learning curve (1,000 held-out images, smallest and largest width) into metrics.jsonl and TensorBoard; 0 = off.  [default: 0]")] = None,
        ssl: Annotated[SSL | None, typer.Option(help="SSL loss of the full-width network.  [default: the recipe's]")] = None,
        single_width: Annotated[float | None, typer.Option("--single-width", help="Width trained by --method single, in [0.25, 1.0].  [default: 1.0]")] = None,
        accumulate: Annotated[bool | None, typer.Option("--accumulate/--step-per-width",
                                                        help="One optimizer step per iteration, or one per sampled width.  [default: per width]")] = None,
        out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder for checkpoint.pt, config.toml, metrics.jsonl and tb/.  [default: runs/us3l]")] = None,
        resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt with the options saved in OUT/config.toml.")] = False,
        overwrite: Annotated[bool, typer.Option(help="Replace an earlier run in OUT (checkpoint, metrics.jsonl, tb/); without it or --resume an existing run is refused.")] = False,
        workers: Annotated[int | None, typer.Option(help="Processes decoding and cropping image files (0: in the training process).  [default: CPUs - 1, at most 14]")] = None,
        threads: Annotated[int | None, typer.Option(help=threads_help("the recipe's, normally auto"))] = None,
        on_bad_image: Annotated[BadImage | None, typer.Option(help="An unreadable, truncated or decompression-bomb image: skip (count, warn) or fail (stop, exit 2).  [default: skip]")] = None,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.  [default: auto]")] = None,
        amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (CUDA only).  [default: the recipe's]")] = None,
        channels_last: Annotated[bool | None, typer.Option("--channels-last/--no-channels-last", help="NHWC memory format for model and images (faster convolutions on GPUs).  [default: off]")] = None,
        fail_on_collapse: Annotated[bool, typer.Option(help="Stop with exit code 2 when a width's representation collapses.")] = False,
        seed: Annotated[int | None, typer.Option(help="Random seed.  [default: 100]")] = None,
        max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap iterations per epoch (smoke runs).  [default: no cap]")] = None,
        list_recipes_: Annotated[bool, typer.Option("--list-recipes", help="List the presets and exit.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the training result (checkpoint, losses, collapse scores) as JSON.")] = False,
    ) -> None:
        """Train one universally slimmable network with US3L (or a baseline) and write its checkpoint.

        Without options: the embedded digits default (a few minutes on a laptop CPU).

        Multi-GPU or multi-node: torchrun --nproc_per_node=N -m us3l.cli.main train ...
        """
        from ..api import train

        if list_recipes_:
            from us3l.trainer.recipes import list_recipes, recipe_doc

            for name in list_recipes():
                console.print(f"[bold]{name}[/]: {recipe_doc(name)}")
            return
        from us3l.trainer.config_file import to_toml
        from us3l.trainer.recipes import resolve

        flags = dict(arch=arch, data=value(data), data_root=str(data_root) if data_root else None, image_size=image_size,
                     epochs=epochs, batch_size=batch_size, lr=lr, method=value(method),
                     augmentation=value(augmentation), eval_every=eval_every,
                     ssl=value(ssl), single_width=single_width, accumulate=accumulate,
                     out_dir=str(out) if out else None, resume=resume or None, overwrite=overwrite or None, device=device, amp=amp,
                     channels_last=channels_last, fail_on_collapse=fail_on_collapse or None, seed=seed,
                     max_steps_per_epoch=max_steps_per_epoch, workers=workers, threads=threads,
                     on_bad_image=value(on_bad_image))
        cfg = resolve(recipe, config, set_, flags, resume_dir=(out or Path("runs/us3l")) if resume else None)
        if print_config:
            typer.echo(to_toml(cfg), nl=False)
            return
        main = is_main_process()
        if cfg.resume and "WORLD_SIZE" not in os.environ and not (Path(cfg.out_dir) / "checkpoint.pt").is_file():
            from us3l.trainer.loop import nothing_to_resume  # before the start line: the error is the one line

            raise nothing_to_resume(Path(cfg.out_dir))
        if main:
            err_console.print(describe_run(cfg), highlight=False, markup=False, soft_wrap=True)

        def notice(line: str) -> None:
            err_console.print(line, highlight=False, markup=False, soft_wrap=True)

        with progress_bar(f"training {cfg.arch} on {dataset_label(cfg)}", disable=not main) as progress:
            result = train(cfg, progress=progress, notify=notice if main else None)
        if main and as_json:  # under torchrun the other ranks trained the same model: one summary
            print_json(result)
        elif main:
            render(result)
            console.print(f"checkpoint: {result.checkpoint}")
