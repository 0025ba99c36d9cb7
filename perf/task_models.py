"""Task-model figures (run by hand: ``python perf/task_models.py``): top-1 per width.

For widths {0.25, 0.5, 0.75, 1.0}, from one SSL checkpoint (``--ssl-checkpoint``, else one is trained
with the ``digits`` recipe into ``--work``), on the checkpoint's data with a fine-tuning recipe
(``--recipe``; ``--epochs`` overrides its epochs for (b), (c) and (d) alike):

- (a) ``knn``: weighted kNN on the SSL features (``us3l eval``'s protocol: BN recalibrated per width,
  k=20, cosine, T=0.07); ``probe``: ``us3l eval``'s linear probe, trained separately per width on
  standardised features (deterministic given the checkpoint);
- (b) ``frozen``: the frozen backbone with its classifier (``us3l finetune --freeze-backbone``);
  with ``--head per-width`` (the default) one linear probe per width on eval-mode features,
  standardised per width as the probe's (the statistics folded into each head afterwards), with
  ``--head shared`` one input-slimmed head for every width;
- (c) ``finetune``: universally slimmable fine-tuning (``us3l finetune``: sandwich rule, in-place
  distillation, ``--head``), one checkpoint for all widths;
- (d) ``scratch``: the same architecture trained supervised from random weights, separately at each
  width (four networks), with the same recipe, data and **the same number of epochs** as (c): the
  like-for-like comparison (the JSON records each run's epochs and ``--include`` refuses others).

(b), (c) and (d) are repeated with ``--seeds`` seeds (0, 1, 2, ...: head initialisation, data order,
augmentation and width draws); the table shows mean ± std over seeds (kNN is deterministic given
the checkpoint). Jobs run ``--jobs`` at a time, one intra-op thread each.

``--int8``: the precision figures of the fine-tuned task model. The first seed's (c) checkpoint is
exported per width as an ONNX classifier (``us3l export --outputs logits``) in FP32 and in static
INT8 (QDQ, calibrated on training images), and each artifact's own top-1 is measured in ONNX
Runtime (``us3l eval --artifact``), beside (c)'s PyTorch top-1.

``--methods`` runs a subset of (b), (c), (d) and ``--include FILE`` adds the runs of an earlier
``--json`` (e.g. the scratch baselines, run while the SSL checkpoint trained); ``--methods none
--include FILE --int8`` only measures the artifacts. ``--tiny`` is a smoke run
(an untrained checkpoint, one seed, 2 steps per epoch, widths 0.25 and 1.0). Prints the table and the goals
((b) within 1 point of the per-width probe, (c) within 1 point of (d), at every width);
``--json FILE`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

WIDTHS = (0.25, 0.5, 0.75, 1.0)
METHODS = ("frozen", "finetune", "scratch")


def _job(args: tuple[str, str, int, float | None, dict[str, Any]]) -> dict[str, Any]:
    """One fine-tuning run (in a worker process, one thread)."""
    import torch

    torch.set_num_threads(1)
    from us3l.trainer.finetune import FinetuneConfig, get_finetune_recipe, run_finetune

    ckpt, method, seed, width, opts = args
    out = Path(opts["work"]) / f"{method}_s{seed}" / (f"w{width}" if width is not None else "all")
    cfg = FinetuneConfig(checkpoint=ckpt, out_dir=str(out), seed=seed, **get_finetune_recipe(opts["recipe"]))
    cfg = cfg.replace(epochs=opts.get("epochs"), max_steps_per_epoch=opts.get("max_steps_per_epoch"),
                      calib_batches=opts.get("calib_batches"), widths=opts.get("widths"), head=opts.get("head"))
    if method == "frozen":
        cfg = cfg.replace(freeze_backbone=True)
    elif method == "scratch":
        cfg = cfg.replace(init="scratch", train_width=width)
    t0 = time.perf_counter()
    res = run_finetune(cfg)
    return {"method": method, "seed": seed, "width": width, "top1": {str(r["width"]): r["top1"] for r in res.rows},
            "seconds": round(time.perf_counter() - t0, 1), "checkpoint": str(res.checkpoint), "epochs": cfg.epochs,
            "head": cfg.head, "history": res.history}  # per-epoch training losses (max width, sub-widths)


class _NoPool:
    """``--jobs 1``: run in this process (no worker start-up)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _ssl_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    if args.ssl_checkpoint:
        return Path(args.ssl_checkpoint)
    from us3l.core.checkpoint import Checkpoint, save_checkpoint
    from us3l.core.data import DatasetSpec

    if args.tiny:  # an untrained network: the smoke run measures plumbing, not accuracy
        import torch

        from us3l.core.models import get_model

        torch.manual_seed(0)
        ckpt = Checkpoint.from_model(get_model("us_resnet_mini"), dataset=DatasetSpec("digits").to_dict())
        path = work / "untrained.pt"
        save_checkpoint(ckpt, path)
        return path
    from us3l.api import train

    print("training the SSL checkpoint (digits recipe)...", flush=True)
    return train(recipe="digits", out_dir=str(work / "ssl")).checkpoint


def artifact_top1(task_ckpt: str, widths: tuple[float, ...], out: Path) -> list[dict[str, Any]]:
    """Top-1 of the task checkpoint's FP32 and INT8 ONNX classifiers per width (ONNX Runtime)."""
    from us3l.core.checkpoint import load_checkpoint
    from us3l.exporters import ExportConfig, run_export
    from us3l.trainer.evaluate import evaluate_artifact

    ckpt = load_checkpoint(task_ckpt)
    rows = []
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        res = run_export(ExportConfig(checkpoint=task_ckpt, widths=tuple(widths), precision=precision, outputs="logits",
                                  out_dir=str(out / precision), force=True))
        seconds = time.perf_counter() - t0
        for art in res.artifacts:
            row = evaluate_artifact(ckpt, art.path)
            rows.append({"width": row["width"], "precision": precision, "top1": row["top1"],
                         "gate_mean_cosine": (art.parity or {}).get("mean_cosine"),
                         "bytes": art.path.stat().st_size, "artifact": str(art.path)})
        print(f"  exported and measured {precision} in {seconds:.0f}s", flush=True)
    return rows


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.1f}" + (f"±{100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssl-checkpoint", help="SSL checkpoint to start from (default: train one with the digits recipe)")
    ap.add_argument("--recipe", default="digits", help="fine-tuning recipe (digits, fashion_mnist, cifar)")
    ap.add_argument("--head", choices=("per-width", "shared"), default="per-width",
                    help="classifier of (b) and (c): one linear layer per width (default) or one shared head")
    ap.add_argument("--epochs", type=int, help="epochs of (b), (c) and (d) (default: the recipe's)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds for (b), (c), (d)")
    ap.add_argument("--jobs", type=int, default=2, help="parallel runs (one thread each; 1 = in this process)")
    ap.add_argument("--work", default="perf-task-models", help="working folder (checkpoints)")
    ap.add_argument("--tiny", action="store_true", help="smoke run: untrained checkpoint, one seed, 2 steps per epoch")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="which of frozen, finetune, scratch to run (default: all three)")
    ap.add_argument("--include", action="append", default=[],
                    help="an earlier --json of this script whose runs join the table (same recipe, epochs and "
                         "widths; e.g. scratch baselines run while the SSL checkpoint trained); repeatable")
    ap.add_argument("--knn-k", type=int, help="kNN neighbours of (a) (default: us3l eval's, 20 or 200 on 10k+ images)")
    ap.add_argument("--int8", action="store_true",
                    help="also export (c) per width as FP32 and INT8 ONNX classifiers and measure their top-1")
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    opts: dict[str, Any] = {"work": str(work), "recipe": args.recipe, "epochs": args.epochs, "head": args.head}
    seeds = list(range(1 if args.tiny else args.seeds))
    if args.tiny:
        opts.update(epochs=1, max_steps_per_epoch=2, calib_batches=1)
    ckpt = _ssl_checkpoint(args, work)
    widths = (0.25, 1.0) if args.tiny else WIDTHS
    opts["widths"] = ",".join(map(str, widths))

    from us3l.core.checkpoint import load_checkpoint
    from us3l.trainer.evaluate import evaluate_checkpoint

    methods = [m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "none"]
    if any(m not in METHODS for m in methods):
        ap.error(f"--methods {args.methods!r}: valid names are {', '.join(METHODS)}")
    knn: dict[str, float] = {}
    probe: dict[str, float] = {}
    runs: list[dict[str, Any]] = []
    for earlier in map(Path, args.include):
        try:
            prev = json.loads(earlier.read_text())
        except (OSError, ValueError) as exc:
            ap.error(f"--include {earlier}: cannot read it ({exc})")
        same = {k: prev["settings"].get(k) for k in ("recipe", "epochs", "widths", "tiny", "head")}
        same["head"] = same["head"] or "shared"  # files written before --head existed
        if same != {"recipe": args.recipe, "epochs": opts.get("epochs"), "widths": list(widths), "tiny": args.tiny,
                    "head": args.head}:
            ap.error(f"--include {earlier}: its settings {same} differ from this run's")
        kept = [r for r in prev["runs"] if r["method"] not in methods]  # this run's methods are re-measured
        if any(r["method"] != "scratch" for r in kept) and prev["settings"].get("ssl_checkpoint") != str(ckpt):
            ap.error(f"--include {earlier}: its (b)/(c) runs start from {prev['settings'].get('ssl_checkpoint')}, "
                     f"this run from {ckpt}")
        runs += kept
        if not knn and prev.get("knn"):  # the SSL checkpoint's kNN / probe, measured by the earlier run
            knn, probe = prev["knn"], prev["probe"]
    if args.int8 and "finetune" not in methods and not any(r["method"] == "finetune" for r in runs):
        ap.error("--int8 needs a (c) finetune run: in --methods or in an --include file")
    if methods and methods != ["scratch"]:  # scratch alone does not use the SSL weights: no kNN / probe
        knn_rows = evaluate_checkpoint(load_checkpoint(ckpt), list(widths), "both", calib_batches=2 if args.tiny else 50,
                                       knn_k=args.knn_k)
        knn = {str(r["width"]): r["knn"] for r in knn_rows}
        probe = {str(r["width"]): r["linear"] for r in knn_rows}
    jobs = [(str(ckpt), m, s, w, opts) for s in seeds for m in methods for w in ((None,) if m != "scratch" else widths)]
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else None
    with pool or _NoPool():
        for r in (pool.map(_job, jobs) if pool else map(_job, jobs)):
            runs.append(r)
            print(f"  {r['method']:8s} seed {r['seed']} width {r['width'] or 'all'}: "
                  + ", ".join(f"{w} {100 * a:.1f}" for w, a in r["top1"].items()) + f" ({r['seconds']}s)", flush=True)
    table: dict[str, dict[str, list[float]]] = {m: {str(w): [] for w in widths} for m in METHODS}
    for r in runs:
        for w, a in r["top1"].items():
            table[r["method"]][w].append(a)
    epochs_run = sorted({r.get("epochs") for r in runs if r.get("epochs") is not None})
    print(f"\ntop-1 per width (%), {args.recipe}, {'/'.join(map(str, epochs_run)) or '-'} epoch(s), "
          f"{len(seeds)} seed(s), mean±std; (b) and (c) with {args.head} head(s)")
    print(f"{'width':>6} {'(a) kNN':>8} {'probe':>6} {'(b) frozen':>11} {'(c) finetune':>13} {'(d) scratch':>12}")
    goals = []
    for w in map(str, widths):
        b, c, d = (statistics.fmean(table[m][w]) if table[m][w] else float("nan") for m in METHODS)
        pr = probe.get(w, float("nan"))
        print(f"{w:>6} {_fmt([knn[w]] if w in knn else []):>8} {_fmt([probe[w]] if w in probe else []):>6} "
              f"{_fmt(table['frozen'][w]):>11} {_fmt(table['finetune'][w]):>13} {_fmt(table['scratch'][w]):>12}")
        goals.append({"width": float(w), "b_minus_probe": b - pr, "c_minus_d": c - d, "c_minus_b": c - b,
                      "b_within_1pt_of_probe": None if math.isnan(b - pr) else b >= pr - 0.01,
                      "c_within_1pt_of_d": None if math.isnan(c - d) else c >= d - 0.01})

    def verdict(ok: bool, diff: float) -> str:
        return "n/a" if math.isnan(diff) else f"{'yes' if ok else 'NO'} ({100 * diff:+.1f})"

    print("\ngoals: (b) within 1 point of the per-width probe: " + ", ".join(
        f"{g['width']} {verdict(g['b_within_1pt_of_probe'], g['b_minus_probe'])}" for g in goals))
    print("       (c) within 1 point of (d) at the same epochs: " + ", ".join(
        f"{g['width']} {verdict(g['c_within_1pt_of_d'], g['c_minus_d'])}" for g in goals))
    if len(epochs_run) > 1:
        print(f"       note: the runs have different epochs ({epochs_run}): not a like-for-like table")
    top = table["finetune"][str(widths[-1])]
    if args.recipe == "fashion_mnist" and top:  # issue 16's goal for the task model
        mean_top = statistics.fmean(top)
        print(f"       (c) top-1 >= 90 % at width {widths[-1]}: {'yes' if mean_top >= 0.9 else 'NO'} "
              f"({100 * mean_top:.1f})")
    int8_rows: list[dict[str, Any]] = []
    if args.int8:
        task = min((r for r in runs if r["method"] == "finetune"), key=lambda r: r["seed"])
        int8_rows = artifact_top1(task["checkpoint"], widths, work / "artifacts")
        torch_top1 = task["top1"]
        print(f"\n(c) seed {task['seed']} as ONNX classifiers: top-1 per width (%), ONNX Runtime")
        print(f"{'width':>6} {'pytorch':>8} {'fp32':>6} {'int8':>6} {'int8-fp32':>10} {'int8 cos':>9}")
        for w in widths:
            got = {r["precision"]: r for r in int8_rows if r["width"] == w}
            fp, q = got["fp32"]["top1"], got["int8"]["top1"]
            print(f"{w:>6} {100 * torch_top1[str(w)]:8.1f} {100 * fp:6.1f} {100 * q:6.1f} {100 * (q - fp):+10.1f} "
                  f"{got['int8']['gate_mean_cosine'] or float('nan'):9.4f}")
    wall = time.perf_counter() - t0
    print(f"wall time {wall:.0f}s")
    if args.json:  # a missing method's goal is null in the file (JSON has no NaN)
        from us3l.core.files import atomic_write_json

        goals = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in g.items()} for g in goals]
        atomic_write_json(args.json, {
            "settings": {"recipe": args.recipe, "epochs": opts.get("epochs"), "seeds": seeds, "tiny": args.tiny,
                         "head": args.head, "epochs_run": epochs_run,
                         "ssl_checkpoint": str(ckpt), "widths": list(widths),
                         "methods": methods, "included": args.include, "knn_k": args.knn_k},
            "knn": knn, "probe": probe, "runs": runs,
            "summary": {m: {w: {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}
                            for w, v in table[m].items() if v} for m in METHODS},
            "goals": goals, "artifacts": int8_rows, "wall_seconds": round(wall, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
