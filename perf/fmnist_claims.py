"""The method's claims measured on Fashion-MNIST, sized for a CPU (run by hand: ``python perf/fmnist_claims.py``).

A fair comparison on a fixed subset (default: the first 10,000 training and the first 2,000 test
images) at 20 px (the raw-pixel baselines are the same as at 28 px there, and training is about
twice as fast), with the ``fashion_mnist`` recipe's model and optimiser (us_resnet_mini, SimCLR
heads, batch 128, lr 0.1 cosine) and the **gray** views (docs/method.md §12.2: crop scale (0.2, 1),
affine, flip, brightness/contrast, noise, erasing), the same epochs for every trained network:

- ``us3l``: one universally slimmable network trained with US3L;
- ``naive``: the reference's naive configuration (docs/method.md §7.4: SimCLR at the full width,
  sub-widths distilled through the predictor to the detached online full-width output; no
  GroupReg, no schedule);
- ``naive-contrastive``: US-Net sandwich + online-vs-online SimCLR at every sampled width;
- ``alone``: one network trained at width 0.25 only (SSL against its own EMA teacher);
- ``random``: the untrained network (BN recalibrated per width);
- ``raw pixels``: weighted kNN and a linear probe on the normalised pixels.

Every network: BN recalibration at each width, then weighted kNN (k=20, cosine, T=0.07) per width
{0.25, 0.5, 0.75, 1.0} and the linear probe ("fast" preset) at 0.25 and 1.0. **Learning curves**:
the trained networks run with ``--eval-every 1`` (kNN of the first 1,000 test images against
5,000 fixed training images at their smallest and largest width after every epoch, docs/method.md
§12.2); the table and ``--plot PNG`` show US3L and both naives, and the slope of US3L − naive at
width 0.25 (least squares over the last ``--slope-epochs`` epochs, points per epoch) says where
the gap is heading. The collapse monitor's scores are those of the last epoch.

``--estimate`` times a few steps of every job (the learning-curve kNN included) and prints the
wall time predicted for ``--jobs`` one-thread processes and the largest epoch count that fits
``--budget-minutes`` (60). Seeds: ``--seeds N`` runs seeds 100, 101, ... (``--first-seed`` moves
the start); ``--include FILE`` adds the runs of an earlier ``--json`` with the same protocol, so a
second seed can run in another session and be reported with the first. ``--tiny`` is a smoke run
(seconds). Prints the tables and the goals of issue 26; ``--json FILE`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

WIDTHS = (0.25, 0.5, 0.75, 1.0)
LINEAR_WIDTHS = (0.25, 1.0)
ALONE_WIDTH = 0.25
KINDS = ("us3l", "naive", "naive-contrastive", "alone", "random")
CURVE_KINDS = ("us3l", "naive", "naive-contrastive")  # the learning-curve table and plot
LABELS = {"us3l": "US3L", "naive": "naive (reference)", "naive-contrastive": "naive-contrastive",
          "alone": "0.25 trained alone", "random": "random init"}
RAW_PIXELS_ISSUE = {"knn": 0.830, "linear": 0.839}  # issue 26's pixel baselines at 20 px on this subset


@dataclass(frozen=True)
class Settings:
    """One comparison's protocol (stored in the JSON)."""

    train_size: int = 10_000
    test_size: int = 2_000
    image_size: int = 20
    epochs: int = 12
    seeds: int = 1
    batch_size: int = 128
    max_steps_per_epoch: int | None = None
    knn_k: int = 20
    calib_batches: int = 20
    eval_batch: int = 256
    eval_every: int = 1  # learning curves of the trained networks
    eval_images: int = 1_000
    eval_bank: int = 5_000
    augmentation: str = "gray"
    jobs: int = 2
    data_root: str | None = None  # the full Fashion-MNIST (default: the Debian location)
    work: str = ""  # subset files and checkpoints
    linear_epochs: int | None = None  # None: the "fast" preset's 60
    lr: float | None = None  # None: the recipe's 0.1 (at batch 128)
    # runtime (do not change the protocol): perf/gpu_fmnist.py trains on a GPU with AMP and NHWC
    device: str = "cpu"
    amp: bool = False
    channels_last: bool = False
    threads: int = 1

    def train_config(self, method: str, seed: int, width: float | None, out: Path):
        from us3l.trainer.recipes import get_recipe

        return get_recipe("fashion_mnist").replace(
            data_root=str(self.subset_root), image_size=self.image_size, epochs=self.epochs,
            batch_size=self.batch_size, method=method, single_width=width, seed=seed, out_dir=str(out),
            tensorboard=False, threads=self.threads, log_interval=10_000, max_steps_per_epoch=self.max_steps_per_epoch,
            lr=self.lr, device=self.device, amp=self.amp, channels_last=self.channels_last,
            augmentation=self.augmentation, eval_every=self.eval_every,
            eval_images=min(self.eval_images, self.test_size), eval_bank=min(self.eval_bank, self.train_size))

    @property
    def subset_root(self) -> Path:
        return Path(self.work) / f"fmnist_{self.train_size}_{self.test_size}"

    @property
    def spec(self):
        from us3l.core.data import DatasetSpec

        return DatasetSpec("fashion-mnist", str(self.subset_root), self.image_size)


@dataclass
class Job:
    kind: str  # one of KINDS
    seed: int
    result: dict = field(default_factory=dict)

    @property
    def width(self) -> float | None:
        return ALONE_WIDTH if self.kind == "alone" else None

    @property
    def name(self) -> str:
        return f"{self.kind}_s{self.seed}"

    @property
    def widths(self) -> tuple[float, ...]:
        return (ALONE_WIDTH,) if self.kind == "alone" else WIDTHS

    @property
    def method(self) -> str:
        return {"alone": "single", "random": "us3l"}.get(self.kind, self.kind)


# relative cost per training image, only to order the queue (longest first); measured one thread, 20 px
_ORDER = {"us3l": 1 / 50.0, "naive": 1 / 60.0, "naive-contrastive": 1 / 65.0, "alone": 1 / 400.0, "random": 0.0}


def make_jobs(seeds: int, first_seed: int = 100, kinds: tuple[str, ...] = KINDS) -> list[Job]:
    jobs = [Job(kind, first_seed + s) for s in range(seeds) for kind in kinds]
    return sorted(jobs, key=lambda j: -_ORDER[j.kind])  # greedy LPT on the pool


def _init_worker() -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


#: TrainConfig fields a continued run may change (runtime only); the learning-curve settings are protocol here
RESUME_RUNTIME = ("resume", "overwrite", "out_dir", "device", "log_interval", "fail_on_collapse", "threads",
                  "tensorboard", "channels_last", "workers", "prefetch", "on_bad_image")


def held_epochs(job: Job, st: Settings, resume: bool) -> int | None:
    """Epochs the checkpoint of ``job`` in ``--work`` holds (None: no earlier run there).

    Raises:
        ValueError: (one line) an earlier run is there without ``resume``, or its configuration
            differs from this protocol's in anything but runtime settings.
    """
    from us3l.core.checkpoint import load_checkpoint
    from us3l.core.errors import US3LError
    from us3l.trainer.config import TrainConfig

    out = Path(st.work) / "runs" / job.name
    if job.kind == "random" or not (out.exists() and any(out.iterdir())):
        return None
    ckpt_path = out / "checkpoint.pt"
    if not resume:
        raise ValueError(f"{out} already holds a run; pass --resume to continue or evaluate it, or choose another --work")
    if not ckpt_path.is_file():
        raise ValueError(f"{out} holds no checkpoint.pt (a run stopped before its first epoch); remove that folder")
    try:
        ckpt = load_checkpoint(ckpt_path)
        saved = TrainConfig.from_dict(dict(ckpt.train_config or {})).to_dict()
    except (US3LError, TypeError, ValueError) as exc:
        raise ValueError(f"--resume {ckpt_path}: {exc}") from None
    mine = st.train_config(job.method, job.seed, job.width, out).resolved(gray=st.augmentation == "gray").to_dict()
    diff = [f"{k} {saved.get(k)!r} vs {v!r}" for k, v in mine.items() if k not in RESUME_RUNTIME and saved.get(k) != v]
    if diff:
        raise ValueError(f"--resume {out}: its configuration differs from this protocol's ({'; '.join(diff)})")
    return int(ckpt.epoch or 0)


def run_job(job: Job, st: Settings, resume: bool = False) -> Job:
    """Train (unless random), evaluate per width, collect the collapse scores and the learning curve.

    ``resume``: a checkpoint of this run in ``--work`` that holds the protocol's epochs is evaluated
    without training; a shorter one continues training from it (the trainer's own resume: the same
    weights, optimiser, schedule and RNG state; metrics.jsonl keeps its earlier curve records).
    """
    import torch

    from us3l.core.checkpoint import Checkpoint, load_checkpoint
    from us3l.trainer.collapse import measure_collapse
    from us3l.trainer.evaluate import evaluate_checkpoint
    from us3l.trainer.loop import Trainer, run_training
    from us3l.trainer.probes import LINEAR_PRESETS

    out = Path(st.work) / "runs" / job.name
    t0 = time.perf_counter()
    curve: list[dict] = []
    held: int | None = None
    if job.kind == "random":
        cfg = st.train_config("us3l", job.seed, None, out).replace(eval_every=0)
        trainer = Trainer(cfg)  # seeded initial weights, no training
        collapse = [s.to_dict() for s in measure_collapse(trainer.raw_model.online_encoder(), trainer.held_out,
                                                          list(WIDTHS), cfg.collapse_std_ratio)]
        ckpt = Checkpoint.from_model(trainer.raw_model.backbone, method="untrained", dataset=st.spec.to_dict())
        del trainer
    else:
        cfg = st.train_config(job.method, job.seed, job.width, out)
        held = held_epochs(job, st, resume) if resume else None
        if held is not None and held >= cfg.epochs:
            ckpt = load_checkpoint(out / "checkpoint.pt")  # trained already: evaluate only
        else:
            ckpt = load_checkpoint(run_training(cfg.replace(resume=held is not None)))
        records = _records(out)
        collapse = records[-1].get("collapse", []) if records else []
        curve = [{"epoch": r["epoch"], **r["knn"], "knn_s": r.get("knn_s")} for r in records if "knn" in r]
    train_s = time.perf_counter() - t0
    linear = LINEAR_PRESETS["fast"]
    if st.linear_epochs:
        m = st.linear_epochs
        linear = replace(linear, epochs=m, milestones=(max(1, round(0.6 * m)), max(1, round(0.8 * m))))
    knn, lin = {}, {}
    t1 = time.perf_counter()
    for w in job.widths:
        torch.manual_seed(0)
        method = "both" if any(abs(w - lw) < 1e-9 for lw in LINEAR_WIDTHS) else "knn"
        row = evaluate_checkpoint(ckpt, [w], method, st.spec, calib_batches=st.calib_batches, knn_k=st.knn_k,
                                  linear=linear, batch_size=st.eval_batch, device=st.device)[0]
        knn[w] = row["knn"]
        if "linear" in row:
            lin[w] = row["linear"]
    job.result = {"knn": knn, "linear": lin, "collapse": collapse, "curve": curve, "train_s": round(train_s, 1),
                  "eval_s": round(time.perf_counter() - t1, 1)}
    if held is not None:
        job.result["resumed_from_epoch"] = held  # train_s is this invocation's share only
    return job


#: settings that must agree for runs of two invocations to be reported together
PROTOCOL = ("train_size", "test_size", "image_size", "epochs", "batch_size", "max_steps_per_epoch", "knn_k",
            "calib_batches", "eval_batch", "eval_every", "eval_images", "eval_bank", "augmentation", "linear_epochs", "lr")


def included_jobs(path: Path, st: Settings) -> list[Job]:
    """The runs of an earlier ``--json`` (same protocol, else ValueError naming the difference)."""
    try:
        prev = json.loads(Path(path).read_text())
        settings, runs = dict(prev["settings"]), list(prev["runs"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--include {path}: not a --json file of this script ({exc!r})") from None
    diff = {k: (settings.get(k), getattr(st, k)) for k in PROTOCOL if settings.get(k) != getattr(st, k)}
    if diff:
        raise ValueError(f"--include {path}: its protocol differs from this run's: "
                         + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in diff.items()))
    try:
        return [Job(r["method"], r["seed"], {k: v for k, v in r.items() if k not in ("method", "seed", "width")})
                for r in runs]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"--include {path}: a run lacks {exc!r}") from None


def raw_pixels(st: Settings) -> dict[str, float]:
    """kNN and linear probe ("fast" preset) on the normalised pixels at the protocol's size."""
    import torch

    from us3l.core.data import load_split
    from us3l.trainer.probes import (
        KNN_TEMPERATURE,
        LINEAR_PRESETS,
        knn_accuracy,
        linear_probe_accuracy,
    )

    x, y = load_split(st.spec, "train")
    xt, yt = load_split(st.spec, "test")
    f, ft = x[:, 0].flatten(1), xt[:, 0].flatten(1)  # one channel: the three are copies
    torch.manual_seed(0)
    probe = LINEAR_PRESETS["fast"]
    if st.linear_epochs:
        m = st.linear_epochs
        probe = replace(probe, epochs=m, milestones=(max(1, round(0.6 * m)), max(1, round(0.8 * m))))
    return {"knn": knn_accuracy(f, y, ft, yt, st.knn_k, KNN_TEMPERATURE, 10),
            "linear": linear_probe_accuracy(f, y, ft, yt, 10, probe)}


# ------------------------------------------------------------------ the estimate


def estimate(st: Settings, budget_min: float, steps: int = 3) -> dict:
    """Time ``steps`` training iterations of every job kind, one learning-curve point, feature
    extraction per width and one linear probe; predict the comparison's wall time with the pool's
    greedy job order.

    Timed in this process's CPU seconds (one intra-op thread), not wall seconds: on a shared
    machine the wall clock measures the neighbours' load, the CPU time what a free core gives.
    """
    import torch

    from us3l.core.bn import calibrate_bn
    from us3l.core.data import load_split
    from us3l.core.models import get_model
    from us3l.trainer.loop import Trainer
    from us3l.trainer.probes import (
        LINEAR_PRESETS,
        extract_features,
        knn_accuracy,
        linear_probe_accuracy,
    )

    torch.set_num_threads(1)
    n_steps = max(1, st.train_size // st.batch_size)
    if st.max_steps_per_epoch:
        n_steps = min(n_steps, st.max_steps_per_epoch)
    per_image: dict[str, float] = {}
    curve_s: dict[str, float] = {}
    for kind in [k for k in KINDS if k != "random"]:
        job = Job(kind, 100)
        tr = Trainer(st.train_config(job.method, 100, job.width, Path(st.work) / "estimate" / kind))
        tr.steps_per_epoch = 1
        tr._train_epoch(0, 100)  # warm-up
        tr.steps_per_epoch = steps
        t = time.process_time()
        tr._train_epoch(1, 100)
        per_image[kind] = (time.process_time() - t) / (steps * st.batch_size)
        if tr.monitor is not None:
            t = time.process_time()
            tr.monitor(tr.raw_model.backbone)
            curve_s[kind] = time.process_time() - t
        print(f"  train {kind:18s} {1 / per_image[kind]:6.1f} img/s, learning-curve point {curve_s.get(kind, 0):5.1f}s",
              flush=True)
    x, y = load_split(st.spec, "train")
    n = min(1024, len(x))
    model = get_model("us_resnet_mini", input_size=st.image_size)
    n_eval = min(st.train_size, st.calib_batches * st.eval_batch) + st.train_size + st.test_size
    eval_full = {}
    for w in WIDTHS:
        t = time.process_time()
        calibrate_bn(model, [x[i:i + st.eval_batch] for i in range(0, n, st.eval_batch)], w)
        f = extract_features(model, x[:n], w, st.eval_batch)
        eval_full[w] = (time.process_time() - t) / (2 * n) * n_eval
        print(f"  eval  width {w:<5}  {2 * n / (time.process_time() - t):6.0f} img/s", flush=True)
    reps = max(1, st.train_size // n)
    t = time.process_time()
    knn_accuracy(f, y[:n], f[: min(n, st.test_size)], y[: min(n, st.test_size)], st.knn_k)
    knn_s = (time.process_time() - t) * reps * max(1, st.test_size // n)
    t = time.process_time()
    linear_probe_accuracy(f, y[:n], f, y[:n], 10, LINEAR_PRESETS["fast"])
    linear_s = (time.process_time() - t) * reps

    def job_seconds(job: Job, epochs: int) -> float:
        train_s = 0.0 if job.kind == "random" else per_image[job.kind] * n_steps * st.batch_size * epochs
        if st.eval_every and job.kind in curve_s:
            train_s += curve_s[job.kind] * (epochs // st.eval_every)
        probes = sum(knn_s + (linear_s if w in LINEAR_WIDTHS else 0.0) for w in job.widths)
        return train_s + sum(eval_full[w] for w in job.widths) + probes + 15.0  # + start-up and data loading

    def wall(epochs: int) -> float:
        loads = [0.0] * st.jobs
        for job in make_jobs(st.seeds):
            i = loads.index(min(loads))
            loads[i] += job_seconds(job, epochs)
        return max(loads)

    fit = 0
    while fit < 1000 and wall(fit + 1) <= budget_min * 60:
        fit += 1
    return {"train_img_per_s": {k: round(1 / v, 1) for k, v in per_image.items()},
            "curve_point_s": {k: round(v, 1) for k, v in curve_s.items()},
            "eval_s_per_width": {f"{w:g}": round(s, 1) for w, s in eval_full.items()},
            "knn_s": round(knn_s, 1), "linear_probe_s": round(linear_s, 1),
            "predicted_wall_s": round(wall(st.epochs)), "budget_s": budget_min * 60, "max_epochs_in_budget": fit,
            "note": "CPU seconds of one thread of this machine (load-independent); --jobs processes assumed to get "
                    "one free core each"}


# ------------------------------------------------------------------ tables


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f}±{100 * statistics.stdev(values):.1f}"


def summarise(jobs: list[Job]) -> dict:
    """Per method: kNN and linear accuracies per width (lists over seeds), collapse per width, curves."""
    table: dict[str, dict] = {}
    for j in jobs:
        row = table.setdefault(j.kind, {"knn": {}, "linear": {}, "std_ratio": {}, "eff_rank": {}, "curve": {}})
        for w, acc in j.result["knn"].items():
            row["knn"].setdefault(float(w), []).append(acc)
        for w, acc in j.result["linear"].items():
            row["linear"].setdefault(float(w), []).append(acc)
        for c in j.result["collapse"]:
            if j.width is None or abs(c["width"] - j.width) < 1e-6:
                row["std_ratio"].setdefault(round(c["width"], 4), []).append(c["std_ratio"])
                row["eff_rank"].setdefault(round(c["width"], 4), []).append(c["eff_rank"])
        for point in j.result.get("curve", []):
            for key, acc in point.items():
                if key not in ("epoch", "knn_s") and acc is not None:
                    row["curve"].setdefault(int(point["epoch"]), {}).setdefault(float(key), []).append(acc)
    return table


def gap_curve(jobs: list[Job], width: float = 0.25) -> dict[int, dict[int, float]]:
    """Per seed: epoch -> (US3L - naive) kNN at ``width`` (seeds that ran both)."""
    def curve(kind: str, seed: int) -> dict[int, float]:
        for j in jobs:
            if j.kind == kind and j.seed == seed:
                return {int(p["epoch"]): p[k] for p in j.result.get("curve", []) for k in p
                        if k not in ("epoch", "knn_s") and abs(float(k) - width) < 1e-9}
        return {}

    out = {}
    for seed in sorted({j.seed for j in jobs}):
        us, nv = curve("us3l", seed), curve("naive", seed)
        common = sorted(set(us) & set(nv))
        if common:
            out[seed] = {e: us[e] - nv[e] for e in common}
    return out


def slope(points: dict[int, float], last: int) -> float | None:
    """Least-squares slope (per epoch) over the last ``last`` epochs of ``points``; None with fewer than 2."""
    xs = sorted(points)[-last:]
    if len(xs) < 2:
        return None
    mx = statistics.fmean(xs)
    my = statistics.fmean(points[x] for x in xs)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (points[x] - my) for x in xs) / den


def trend(jobs: list[Job], last: int) -> dict:
    """US3L - naive at 0.25: per seed the end point (final evaluation) and the curve's slope."""
    gaps = gap_curve(jobs)
    seeds = {}
    for seed, pts in gaps.items():
        us = next(j for j in jobs if j.kind == "us3l" and j.seed == seed).result["knn"]
        nv = next(j for j in jobs if j.kind == "naive" and j.seed == seed).result["knn"]
        end = _get(us, 0.25) - _get(nv, 0.25)
        s = slope(pts, last)
        seeds[seed] = {"end_point": end, "slope_per_epoch": s, "epochs": sorted(pts)[-last:],
                       "curve": {str(e): v for e, v in pts.items()}}
    ends = [v["end_point"] for v in seeds.values()]
    slopes = [v["slope_per_epoch"] for v in seeds.values() if v["slope_per_epoch"] is not None]
    return {"per_seed": seeds, "end_point": statistics.fmean(ends) if ends else None,
            "slope_per_epoch": statistics.fmean(slopes) if slopes else None, "last_epochs": last}


def _get(d: dict, w: float) -> float:
    for k, v in d.items():
        if abs(float(k) - w) < 1e-9:
            return v
    raise KeyError(w)


def goals(table: dict, raw: dict[str, float], tr: dict) -> list[dict]:
    mean = statistics.fmean
    out = []
    us, rnd = table.get("us3l"), table.get("random")
    if us:
        top = mean(us["knn"][1.0])
        out.append({"goal": "US3L kNN at width 1.0 >= raw pixels - 1", "value": round(100 * top, 2),
                    "target": f">= {100 * (raw['knn'] - 0.01):.1f}", "met": top >= raw["knn"] - 0.01})
    if us and rnd:
        worst = min(mean(us["knn"][w]) - mean(rnd["knn"][w]) for w in WIDTHS)
        out.append({"goal": "US3L >= random init + 10 at every width", "value": round(100 * worst, 2),
                    "target": ">= 10", "met": 100 * worst >= 10})
    if tr.get("end_point") is not None:
        end, s = 100 * tr["end_point"], tr["slope_per_epoch"]
        note = ""
        if s is not None and s > 0 and end < 1.0:
            note = "the slope is positive but the end point is not yet +1: a longer run (the GPU run) should tell"
        elif s is not None and s <= 0 and end < 1.0:
            note = "the gap is not growing over the last epochs"
        out.append({"goal": "US3L - naive (reference) at width 0.25 >= +1.0", "value": round(end, 2), "target": ">= 1",
                    "met": end >= 1.0, "slope_points_per_epoch": None if s is None else round(100 * s, 3),
                    "seeds": len(tr["per_seed"]), "note": note})
    return out


def render(table: dict, raw: dict[str, float], tr: dict, goal_rows: list[dict], wall_s: float, st: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=100)
    t = Table(title=f"Fashion-MNIST {st.train_size}/{st.test_size} at {st.image_size} px, {st.epochs} ep, "
                    f"{st.seeds} seed(s): accuracy %")
    t.add_column("method")
    for w in WIDTHS:
        t.add_column(f"kNN {w:g}", justify="right")
    for w in LINEAR_WIDTHS:
        t.add_column(f"lin {w:g}", justify="right")
    t.add_row("raw pixels, kNN", *([f"{100 * raw['knn']:.1f}"] * len(WIDTHS)), "-", "-")
    t.add_row("raw pixels, linear probe", *(["-"] * len(WIDTHS)), *([f"{100 * raw['linear']:.1f}"] * len(LINEAR_WIDTHS)))
    for kind in ("random", "naive", "naive-contrastive", "us3l", "alone"):
        if kind in table:
            r = table[kind]
            n = max((len(v) for v in r["knn"].values()), default=0)
            label = LABELS[kind] + (f" ({n} seed{'s' if n > 1 else ''})" if n != st.seeds else "")
            t.add_row(label, *(_fmt(r["knn"].get(w, [])) for w in WIDTHS),
                      *(_fmt(r["linear"].get(w, [])) for w in LINEAR_WIDTHS))
    console.print(t)
    epochs = sorted({e for k in CURVE_KINDS if k in table for e in table[k]["curve"]})
    if epochs:
        c = Table(title=f"learning curves: kNN % on {min(st.eval_images, st.test_size):,} held-out images "
                        "(mean over seeds)")
        c.add_column("epoch", justify="right")
        cols = [(k, w) for w in (0.25, 1.0) for k in CURVE_KINDS if k in table]
        for k, w in cols:
            c.add_column(f"{ {'us3l': 'US3L', 'naive': 'naive', 'naive-contrastive': 'n-contr.'}[k]} {w:g}", justify="right")
        c.add_column("US3L-naive 0.25", justify="right")
        gaps = gap_curve_mean(tr)
        for e in epochs:
            cells = [_fmt(table[k]["curve"].get(e, {}).get(w, [])) for k, w in cols]
            g = gaps.get(e)
            c.add_row(str(e), *cells, "-" if g is None else f"{100 * g:+.1f}")
        console.print(c)
    s = Table(title="collapse monitor (last epoch): std(z/|z|)*sqrt(d) / effective rank")
    s.add_column("method")
    for w in WIDTHS:
        s.add_column(f"w {w:g}", justify="right")
    for kind in ("random", "naive", "naive-contrastive", "us3l", "alone"):
        if kind in table:
            r = table[kind]
            cells = []
            for w in WIDTHS:
                a, e = r["std_ratio"].get(w), r["eff_rank"].get(w)
                cells.append(f"{statistics.fmean(a):.2f} / {statistics.fmean(e):.1f}" if a else "-")
            s.add_row(LABELS[kind], *cells)
    console.print(s)
    for g in goal_rows:
        n_fit = max((len(v["epochs"]) for v in tr.get("per_seed", {}).values()), default=0)
        extra = f", slope {g['slope_points_per_epoch']:+.3f} points/epoch over the last {n_fit} epochs, " \
                f"{g['seeds']} seed(s)" if "slope_points_per_epoch" in g and g["slope_points_per_epoch"] is not None else ""
        console.print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['value']:+.2f} (target {g['target']}){extra}")
        if g.get("note"):
            console.print(f"     {g['note']}")
    console.print(f"wall time {wall_s / 60:.1f} min ({st.jobs} parallel job(s), one thread each)")


def gap_curve_mean(tr: dict) -> dict[int, float]:
    per: dict[int, list[float]] = {}
    for v in tr.get("per_seed", {}).values():
        for e, g in v["curve"].items():
            per.setdefault(int(e), []).append(g)
    return {e: statistics.fmean(g) for e, g in per.items()}


def plot(table: dict, raw: dict[str, float], tr: dict, st: Settings, path: Path) -> Path:
    """Learning curves (kNN per epoch at 0.25 and 1.0) of US3L and both naives, and the US3L - naive gap."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from us3l.core.files import atomic_write_bytes

    fig, (ax, gx) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    colours = {"us3l": "tab:blue", "naive": "tab:red", "naive-contrastive": "tab:orange", "alone": "tab:green"}
    for kind in (*CURVE_KINDS, "alone"):
        if kind not in table or not table[kind]["curve"]:
            continue
        for w, style in ((0.25, "-"), (1.0, "--")):
            pts = sorted((e, statistics.fmean(v[w])) for e, v in table[kind]["curve"].items() if w in v)
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, marker="o", ms=3, color=colours[kind],
                        label=f"{LABELS[kind]} w={w:g}")
    ax.axhline(100 * raw["knn"], color="grey", lw=1, ls=":", label="raw pixels kNN")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"kNN top-1 % ({min(st.eval_images, st.test_size):,} held-out images)")
    ax.set_title(f"Fashion-MNIST {st.train_size:,} images at {st.image_size} px, {st.augmentation} views")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    for seed, v in tr.get("per_seed", {}).items():
        pts = sorted((int(e), g) for e, g in v["curve"].items())
        gx.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=f"seed {seed}")
        if v["slope_per_epoch"] is not None:
            xs = v["epochs"]
            my = statistics.fmean(v["curve"][str(e)] for e in xs)
            mx = statistics.fmean(xs)
            gx.plot(xs, [100 * (my + v["slope_per_epoch"] * (x - mx)) for x in xs], "k--", lw=1)
    gx.axhline(0, color="grey", lw=1)
    gx.axhline(1, color="grey", lw=1, ls=":", label="goal +1")
    gx.set_xlabel("epoch")
    gx.set_ylabel("US3L - naive (reference), kNN points at w=0.25")
    gx.set_title(f"US3L - naive at 0.25 (dashed: fit over last {tr.get('last_epochs')} ep.)", fontsize=10)
    gx.legend(fontsize=7)
    gx.grid(alpha=0.3)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, help="first N training images (default 10000)")
    p.add_argument("--test-size", type=int, help="first N test images (default 2000)")
    p.add_argument("--image-size", type=int, help="side in pixels (default 20)")
    p.add_argument("--epochs", type=int, help="SSL epochs of every trained network (default 12)")
    p.add_argument("--seeds", type=int, help="number of seeds, 100, 101, ... (default 1)")
    p.add_argument("--first-seed", type=int, default=100, help="the first seed (default 100)")
    p.add_argument("--include", type=Path, action="append", default=[],
                   help="an earlier --json of this script (same protocol) whose runs join the tables; repeatable")
    p.add_argument("--jobs", type=int, help="parallel one-thread processes (default 2)")
    p.add_argument("--methods", help="run only these of " + ", ".join(KINDS) + " (default: all; e.g. a second seed of "
                                     "us3l,naive, the pair the US3L - naive goal is about; none: only report the "
                                     "--include files together)")
    p.add_argument("--slope-epochs", type=int, help="epochs the US3L - naive slope is fitted over (default: the "
                                                     "last half, at least 3)")
    p.add_argument("--data-root", help="full Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--work", help="folder for the subset and checkpoints (default: a temp folder)")
    p.add_argument("--resume", action="store_true",
                   help="continue the runs found in --work: one whose checkpoint holds the epochs is evaluated "
                        "without training, a shorter one resumes training from it (its curve kept); a run whose "
                        "configuration differs from the protocol is refused")
    p.add_argument("--tiny", action="store_true", help="smoke run: 128/64 images, 2 epochs of 1 step, 1 job")
    p.add_argument("--estimate", action="store_true", help="time a few steps per job and predict the wall time")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="wall-time budget for --estimate (default 60)")
    p.add_argument("--plot", type=Path, help="write the learning curves as a PNG here")
    p.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    args = p.parse_args(argv)

    st = Settings(train_size=128, test_size=64, epochs=2, batch_size=32, max_steps_per_epoch=1, calib_batches=1,
                  jobs=1, linear_epochs=2, eval_images=32, eval_bank=64) if args.tiny else Settings()
    given = {k: v for k, v in (("train_size", args.train_size), ("test_size", args.test_size),
                               ("image_size", args.image_size), ("epochs", args.epochs), ("seeds", args.seeds),
                               ("jobs", args.jobs), ("data_root", args.data_root)) if v is not None}
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="fmnist_claims_")
    st = replace(st, **given, work=args.work if tmp is None else tmp.name)
    if min(st.train_size, st.test_size, st.epochs, st.seeds, st.jobs) < 1 or st.image_size < 8:
        print("error: sizes, epochs, seeds and jobs must be >= 1 and the image size >= 8", file=sys.stderr)
        return 2
    last = args.slope_epochs or max(3, st.epochs // 2)
    if last < 2:
        print("error: --slope-epochs must be >= 2", file=sys.stderr)
        return 2
    from us3l.core.data import write_fashion_mnist_subset
    from us3l.core.errors import US3LError
    from us3l.core.files import atomic_write_json

    kinds = KINDS
    if args.methods:
        kinds = tuple(k.strip() for k in args.methods.split(",") if k.strip() and k.strip() != "none")
        bad = [k for k in kinds if k not in KINDS]
        if bad or (not kinds and not (args.methods.strip() == "none" and args.include)):
            print(f"error: --methods {args.methods!r}: valid names are {', '.join(KINDS)}, or none with --include",
                  file=sys.stderr)
            return 2
    jobs = make_jobs(st.seeds, args.first_seed, kinds)
    try:  # earlier runs first: a wrong file is refused before any work
        earlier = [j for path in args.include for j in included_jobs(path, st)]
        names = [j.name for j in earlier]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"--include files repeat run(s) {', '.join(twice)}; include each run once")
        clash = {j.name for j in jobs} & set(names)
        if clash:
            raise ValueError(f"--include repeats runs of this invocation ({', '.join(sorted(clash))}); "
                             "choose another --first-seed")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.estimate:
        try:  # runs already in --work: refused without --resume, checked against the protocol with it
            held = {j.name: h for j in jobs if (h := held_epochs(j, st, args.resume)) is not None}
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for name, h in held.items():
            print(f"{name}: checkpoint holds {h} of {st.epochs} epoch(s): "
                  + ("evaluating it" if h >= st.epochs else f"resuming training at epoch {h + 1}"), flush=True)
    start = time.perf_counter()
    try:
        write_fashion_mnist_subset(st.subset_root, st.train_size, st.test_size, st.data_root)
        if args.estimate:
            print(f"timing on {st.train_size}/{st.test_size} images at {st.image_size} px, batch {st.batch_size}, "
                  "one thread, in CPU seconds (what free cores give, whatever the load now):")
            est = estimate(st, args.budget_minutes)
            print(f"predicted wall time for {st.epochs} epoch(s), {st.seeds} seed(s), {st.jobs} job(s): "
                  f"{est['predicted_wall_s'] / 60:.1f} min (budget {args.budget_minutes:g} min; "
                  f"at most {est['max_epochs_in_budget']} epoch(s) fit)")
            if args.json:
                atomic_write_json(args.json, {"settings": asdict(st), "estimate": est})
            return 0
        raw = raw_pixels(st)
        if not jobs:
            done = []
        elif st.jobs == 1:
            _init_worker()
            done = [run_job(j, st, args.resume) for j in jobs]
        else:
            with ProcessPoolExecutor(st.jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
                futures = {pool.submit(run_job, j, st, args.resume): i for i, j in enumerate(jobs)}
                finished: dict[int, Job] = {}
                for fut in as_completed(futures):  # one progress line per finished job
                    finished[futures[fut]] = fut.result()
                    print(f"[{len(finished)}/{len(jobs)}] {finished[futures[fut]].name} done after "
                          f"{(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr, flush=True)
                done = [finished[i] for i in range(len(jobs))]
    except US3LError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall_s = time.perf_counter() - start
    done = earlier + done
    st = replace(st, seeds=len({j.seed for j in done}))
    table = summarise(done)
    tr = trend(done, last)
    goal_rows = goals(table, raw, tr)
    render(table, raw, tr, goal_rows, wall_s, st)
    if earlier:
        print(f"(the wall time is this invocation's; {len(earlier)} run(s) came from {', '.join(map(str, args.include))})")
    if args.plot:
        print(f"learning curves: {plot(table, raw, tr, st, args.plot)}")
    if args.json:
        atomic_write_json(args.json, {
            "command": " ".join(["python", "perf/fmnist_claims.py", *(sys.argv[1:] if argv is None else argv)]),
            "settings": asdict(st), "wall_s": round(wall_s, 1), "raw_pixels": raw,
            "raw_pixels_issue": RAW_PIXELS_ISSUE, "first_seed": args.first_seed,
            "included": [str(x) for x in args.include],
            "runs": [{"method": j.kind, "seed": j.seed, "width": j.width,
                      **{k: ({str(w): a for w, a in v.items()} if isinstance(v, dict) else v)
                         for k, v in j.result.items()}} for j in done],
            "summary": {k: {m: ({str(e): {str(w): a for w, a in pts.items()} for e, pts in d.items()} if m == "curve"
                                else {str(w): vals for w, vals in d.items()}) for m, d in v.items()}
                        for k, v in table.items()},
            "trend": tr, "goals": goal_rows,
        })
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
