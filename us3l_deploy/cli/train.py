"""`us3l train`: self-supervised US3L training of one universally slimmable checkpoint.

With no arguments it trains the embedded digits default (``us_resnet_mini``, a few minutes on a
laptop CPU). ``--recipe`` picks a paper preset (METHOD §9); any flag overrides the preset.
Multi-GPU / multi-node: ``torchrun --nproc_per_node=N -m us3l_deploy.cli.main train ...``.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .common import console, make_progress, user_errors


class Method(str, Enum):
    us3l = "us3l"
    naive = "naive"
    single = "single"


class SSL(str, Enum):
    simclr_momentum = "simclr_momentum"
    byol = "byol"
    mocov3 = "mocov3"


def _summary(ckpt_path: Path) -> None:
    import json

    from rich.table import Table

    from ..width import format_width

    metrics = ckpt_path.parent / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    if not records:
        return
    last = records[-1]
    table = Table(title=f"training summary (epoch {last['epoch']})")
    for col in ("width", "std*sqrt(d)", "effective rank", "collapsed"):
        table.add_column(col, justify="right")
    for s in last.get("collapse", []):
        table.add_row(format_width(s["width"]), f"{s['std_ratio']:.3f}", f"{s['eff_rank']:.1f}",
                      "[red]yes[/]" if s["collapsed"] else "no")
    console.print(table)
    console.print(f"loss (max width) {last.get('loss_base', float('nan')):.4f}, "
                  f"sub-width loss {last.get('loss_distill', float('nan')):.4f}, "
                  f"{last.get('images_per_s', 0):.0f} img/s, {sum(r.get('epoch_time_s', 0) for r in records):.0f}s of training")


def register(app: typer.Typer) -> None:
    @app.command("train")
    @user_errors
    def command(
        recipe: Annotated[str, typer.Option(help="Preset name (digits, cifar100_r18_simclr, imagenet_r50_byol, ...).")] = "digits",
        arch: Annotated[str | None, typer.Option(help="Backbone architecture (registry name).")] = None,
        data: Annotated[str | None, typer.Option(help="Dataset: digits, cifar10, cifar100, imagefolder.")] = None,
        data_root: Annotated[Path | None, typer.Option(help="Dataset folder (all but digits).")] = None,
        image_size: Annotated[int | None, typer.Option(help="Input resolution (default: the dataset's).")] = None,
        epochs: Annotated[int | None, typer.Option(help="Training epochs.")] = None,
        batch_size: Annotated[int | None, typer.Option(help="Batch size per process.")] = None,
        lr: Annotated[float | None, typer.Option(help="Base learning rate (cosine per epoch).")] = None,
        method: Annotated[Method | None, typer.Option(help="us3l, naive (US-Net + SimCLR) or single (one width).")] = None,
        ssl: Annotated[SSL | None, typer.Option(help="SSL objective of the max network.")] = None,
        width: Annotated[float | None, typer.Option(help="The width trained by --method single.")] = None,
        accumulate: Annotated[bool | None, typer.Option("--accumulate/--step-per-width",
                                                        help="One optimizer step per iteration instead of per width.")] = None,
        out: Annotated[Path, typer.Option(help="Output folder (checkpoint.pt, metrics.jsonl, tb/).")] = Path("runs/us3l"),
        resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt (same options).")] = False,
        device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N.")] = None,
        amp: Annotated[bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (CUDA only).")] = None,
        fail_on_collapse: Annotated[bool, typer.Option(help="Stop when the representation collapses.")] = False,
        seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
        max_steps_per_epoch: Annotated[int | None, typer.Option(help="Cap iterations per epoch (smoke runs).")] = None,
        list_recipes_: Annotated[bool, typer.Option("--list-recipes", help="List the presets and exit.")] = False,
    ) -> None:
        """Train one universally slimmable network with US3L (or a baseline) and write its checkpoint."""
        from trainer.recipes import get_recipe, list_recipes, recipe_doc

        if list_recipes_:
            for name in list_recipes():
                console.print(f"[bold]{name}[/]: {recipe_doc(name)}")
            return
        cfg = get_recipe(recipe).replace(
            arch=arch, data=data, data_root=str(data_root) if data_root else None, image_size=image_size,
            epochs=epochs, batch_size=batch_size, lr=lr, method=method.value if method else None,
            ssl=ssl.value if ssl else None, single_width=width, accumulate=accumulate, out_dir=str(out),
            resume=resume, device=device, amp=amp, fail_on_collapse=fail_on_collapse or None, seed=seed,
            max_steps_per_epoch=max_steps_per_epoch,
        )
        from trainer.loop import train

        with make_progress() as bar:
            task = bar.add_task(f"{cfg.method} {cfg.arch} on {cfg.data}", total=None, status="starting")

            def progress(done: int, total: int, status: str) -> None:
                bar.update(task, completed=done, total=total, status=status)

            path = train(cfg, progress)
        _summary(path)
        console.print(f"checkpoint: {path}")
