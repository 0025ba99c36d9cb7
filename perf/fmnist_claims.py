"""The method's claims measured on Fashion-MNIST (run by hand: ``python perf/fmnist_claims.py``).

On a fixed subset (default: the first 10,000 training and the first 2,000 test images, the split
of issue 16's raw-pixel baseline), with the ``fashion_mnist`` recipe (us_resnet_mini, 28 px) and
the same epochs, batch and learning rate for every trained network:

- ``us3l``: one universally slimmable network trained with US3L;
- ``naive``: one network, US-Net sandwich + online-vs-online SimCLR at every sampled width;
- ``individual``: four networks, each trained alone at width 0.25 / 0.5 / 0.75 / 1.0;
- ``random``: the untrained network (BN recalibrated per width);
- ``raw pixels``: kNN on the normalised pixels.

Every network: BN recalibration at each width, then weighted kNN (k=20, cosine, T=0.07: the
issue's protocol) per width {0.25, 0.5, 0.75, 1.0} and the linear probe ("fast" preset) at 0.25
and 1.0. The collapse monitor's scores (std of the l2-normalised projections x sqrt(d), effective
rank, on the first 256 test images) are those of the last training epoch; for random init they are
measured on a freshly initialised backbone + projector. Seeds: ``--seeds N`` repeats everything
with seeds 100, 101, ... (``--first-seed`` moves the start) and reports mean ± std; ``--include
FILE`` adds the runs of an earlier ``--json`` with the same protocol, so seeds can be run in
separate sessions and reported together.

Runs ``--jobs`` trainings in parallel, each on one intra-op thread (on 2 cores, two one-thread
processes beat one two-thread process that spins under contention). ``--estimate`` times a few
steps of every job instead and prints the predicted wall time for the chosen settings (and the
largest epoch count that fits ``--budget-minutes``). ``--tiny`` is a smoke run (seconds).
Prints the tables and the goals of issue 16; ``--json FILE`` writes every number.
"""

from __future__ import annotations

import argparse
import json
import math
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
RAW_PIXELS_ISSUE = 0.829  # issue 16's raw-pixel kNN on the first 10,000 / 2,000 images


@dataclass(frozen=True)
class Settings:
    """One comparison's protocol (stored in the JSON)."""

    train_size: int = 10_000
    test_size: int = 2_000
    epochs: int = 4
    seeds: int = 1
    batch_size: int = 128
    max_steps_per_epoch: int | None = None
    knn_k: int = 20
    calib_batches: int = 20
    eval_batch: int = 256
    jobs: int = 2
    data_root: str | None = None  # the full Fashion-MNIST (default: the Debian location)
    work: str = ""  # subset files and checkpoints
    linear_epochs: int | None = None  # None: the "fast" preset's 60

    def train_config(self, method: str, seed: int, width: float | None, out: Path):
        from us3l.trainer.recipes import get_recipe

        return get_recipe("fashion_mnist").replace(
            data_root=str(self.subset_root), epochs=self.epochs, batch_size=self.batch_size, method=method,
            single_width=width, seed=seed, out_dir=str(out), tensorboard=False, threads=1, log_interval=10_000,
            max_steps_per_epoch=self.max_steps_per_epoch)

    @property
    def subset_root(self) -> Path:
        return Path(self.work) / f"fmnist_{self.train_size}_{self.test_size}"


@dataclass
class Job:
    kind: str  # us3l | naive | individual | random
    seed: int
    width: float | None = None  # individual only
    result: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.kind}_s{self.seed}" + (f"_w{self.width:g}" if self.width is not None else "")

    @property
    def widths(self) -> tuple[float, ...]:
        return (self.width,) if self.width is not None else WIDTHS


# relative cost of one training image per job (measured: us3l 24.5, naive 34.0, single at 1.0 / 0.75 /
# 0.5 / 0.25: 47.8 / 70.0 / 89.5 / 220.7 img/s, one thread, batch 128); only orders the queue
_ORDER = {("us3l", None): 1 / 24.5, ("naive", None): 1 / 34.0, ("individual", 1.0): 1 / 47.8,
          ("individual", 0.75): 1 / 70.0, ("individual", 0.5): 1 / 89.5, ("individual", 0.25): 1 / 220.7,
          ("random", None): 0.0}


def make_jobs(seeds: int, first_seed: int = 100) -> list[Job]:
    jobs = []
    for s in range(seeds):
        seed = first_seed + s
        jobs += [Job("us3l", seed), Job("naive", seed), *(Job("individual", seed, w) for w in WIDTHS),
                 Job("random", seed)]
    return sorted(jobs, key=lambda j: -_ORDER[(j.kind, j.width)])  # longest first: greedy LPT on the pool


def _init_worker() -> None:
    import logging

    import torch

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)


def _last_collapse(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1]).get("collapse", []) if lines else []


def run_job(job: Job, st: Settings) -> Job:
    """Train (unless random), evaluate per width, collect the collapse scores."""
    import torch

    from us3l.core.checkpoint import Checkpoint, load_checkpoint
    from us3l.core.data import DatasetSpec
    from us3l.trainer.collapse import measure_collapse
    from us3l.trainer.evaluate import evaluate_checkpoint
    from us3l.trainer.loop import Trainer, run_training
    from us3l.trainer.probes import LINEAR_PRESETS

    out = Path(st.work) / "runs" / job.name
    spec = DatasetSpec("fashion-mnist", str(st.subset_root), 28)
    t0 = time.perf_counter()
    if job.kind == "random":
        cfg = st.train_config("us3l", job.seed, None, out)
        trainer = Trainer(cfg)  # seeded initial weights, no training
        collapse = [s.to_dict() for s in measure_collapse(trainer.raw_model.online_encoder(), trainer.held_out,
                                                          list(WIDTHS), cfg.collapse_std_ratio)]
        ckpt = Checkpoint.from_model(trainer.raw_model.backbone, method="untrained", dataset=spec.to_dict())
        del trainer
    else:
        method = "single" if job.kind == "individual" else job.kind
        cfg = st.train_config(method, job.seed, job.width, out)
        ckpt = load_checkpoint(run_training(cfg))
        collapse = _last_collapse(out)
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
        row = evaluate_checkpoint(ckpt, [w], method, spec, calib_batches=st.calib_batches, knn_k=st.knn_k,
                                  linear=linear, batch_size=st.eval_batch)[0]
        knn[w] = row["knn"]
        if "linear" in row:
            lin[w] = row["linear"]
    job.result = {"knn": knn, "linear": lin, "collapse": collapse, "train_s": round(train_s, 1),
                  "eval_s": round(time.perf_counter() - t1, 1)}
    return job


#: settings that must agree for runs of two invocations to be reported together
PROTOCOL = ("train_size", "test_size", "epochs", "batch_size", "max_steps_per_epoch", "knn_k", "calib_batches",
            "eval_batch", "linear_epochs")


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
        return [Job(r["method"], r["seed"], r["width"],
                    {k: v for k, v in r.items() if k not in ("method", "seed", "width")}) for r in runs]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"--include {path}: a run lacks {exc!r}") from None


def raw_pixel_knn(st: Settings) -> float:
    from us3l.core.data import DatasetSpec, load_split
    from us3l.trainer.probes import KNN_TEMPERATURE, knn_accuracy

    spec = DatasetSpec("fashion-mnist", str(st.subset_root), 28)
    x, y = load_split(spec, "train")
    xt, yt = load_split(spec, "test")
    return knn_accuracy(x[:, 0].flatten(1), y, xt[:, 0].flatten(1), yt, st.knn_k, KNN_TEMPERATURE, 10)


# ------------------------------------------------------------------ the estimate


def estimate(st: Settings, budget_min: float, steps: int = 3) -> dict:
    """Time ``steps`` training iterations of every job kind, feature extraction per width and one
    linear probe; predict the comparison's wall time with the pool's greedy job order."""
    import torch

    from us3l.core.bn import calibrate_bn
    from us3l.core.data import DatasetSpec, load_split
    from us3l.core.models import get_model
    from us3l.trainer.loop import Trainer
    from us3l.trainer.probes import LINEAR_PRESETS, extract_features, knn_accuracy, linear_probe_accuracy

    torch.set_num_threads(1)
    n_steps = max(1, st.train_size // st.batch_size)
    if st.max_steps_per_epoch:
        n_steps = min(n_steps, st.max_steps_per_epoch)
    per_image: dict[tuple, float] = {}
    for kind, width in [("us3l", None), ("naive", None), *(("individual", w) for w in WIDTHS)]:
        method = "single" if kind == "individual" else kind
        tr = Trainer(st.train_config(method, 100, width, Path(st.work) / "estimate"))
        tr.steps_per_epoch = 1
        tr._train_epoch(0, 100)  # warm-up
        tr.steps_per_epoch = steps
        t = time.perf_counter()
        tr._train_epoch(1, 100)
        per_image[(kind, width)] = (time.perf_counter() - t) / (steps * st.batch_size)
        print(f"  train {kind:10s} {'' if width is None else width:<5} {1 / per_image[(kind, width)]:6.1f} img/s",
              flush=True)
    spec = DatasetSpec("fashion-mnist", str(st.subset_root), 28)
    x, y = load_split(spec, "train")
    n = min(1024, len(x))
    model = get_model("us_resnet_mini", input_size=28)
    n_eval = min(st.train_size, st.calib_batches * st.eval_batch) + st.train_size + st.test_size
    eval_full = {}
    for w in WIDTHS:
        t = time.perf_counter()
        calibrate_bn(model, [x[i:i + st.eval_batch] for i in range(0, n, st.eval_batch)], w)
        f = extract_features(model, x[:n], w, st.eval_batch)
        eval_full[w] = (time.perf_counter() - t) / (2 * n) * n_eval
        print(f"  eval  width {w:<5}  {2 * n / (time.perf_counter() - t):6.0f} img/s", flush=True)
    reps = max(1, st.train_size // n)  # kNN and the linear probe on train_size features
    t = time.perf_counter()
    knn_accuracy(f, y[:n], f[: min(n, st.test_size)], y[: min(n, st.test_size)], st.knn_k)
    knn_s = (time.perf_counter() - t) * reps * max(1, st.test_size // n)
    t = time.perf_counter()
    linear_probe_accuracy(f, y[:n], f, y[:n], 10, LINEAR_PRESETS["fast"])
    linear_s = (time.perf_counter() - t) * reps

    def job_seconds(job: Job, epochs: int) -> float:
        train_s = 0.0 if job.kind == "random" else per_image[(job.kind, job.width)] * n_steps * st.batch_size * epochs
        probes = sum(knn_s + (linear_s if w in LINEAR_WIDTHS else 0.0) for w in job.widths)
        return train_s + sum(eval_full[w] for w in job.widths) + probes + 15.0  # + start-up and data loading

    def wall(epochs: int) -> float:
        loads = [0.0] * st.jobs
        for job in make_jobs(st.seeds):  # the pool's greedy order
            i = loads.index(min(loads))
            loads[i] += job_seconds(job, epochs)
        return max(loads)

    fit = 0
    while fit < 1000 and wall(fit + 1) <= budget_min * 60:
        fit += 1
    return {"train_img_per_s": {f"{k}{'' if w is None else f'@{w:g}'}": round(1 / v, 1) for (k, w), v in per_image.items()},
            "eval_s_per_width": {f"{w:g}": round(s, 1) for w, s in eval_full.items()},
            "knn_s": round(knn_s, 1), "linear_probe_s": round(linear_s, 1),
            "predicted_wall_s": round(wall(st.epochs)), "budget_s": budget_min * 60, "max_epochs_in_budget": fit,
            "note": "timed on one thread of this machine; --jobs processes assumed to get one free core each"}


# ------------------------------------------------------------------ tables


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    m = 100 * statistics.fmean(values)
    return f"{m:.1f}" if len(values) == 1 else f"{m:.1f}±{100 * statistics.stdev(values):.1f}"


def summarise(jobs: list[Job]) -> dict:
    """Per method: kNN and linear accuracies per width (lists over seeds), collapse per width."""
    table: dict[str, dict] = {}
    for j in jobs:
        row = table.setdefault(j.kind, {"knn": {}, "linear": {}, "std_ratio": {}, "eff_rank": {}})
        for w, acc in j.result["knn"].items():
            row["knn"].setdefault(float(w), []).append(acc)
        for w, acc in j.result["linear"].items():
            row["linear"].setdefault(float(w), []).append(acc)
        for c in j.result["collapse"]:
            if j.width is None or abs(c["width"] - j.width) < 1e-6:
                row["std_ratio"].setdefault(round(c["width"], 4), []).append(c["std_ratio"])
                row["eff_rank"].setdefault(round(c["width"], 4), []).append(c["eff_rank"])
    return table


def goals(table: dict, raw: float) -> list[dict]:
    mean = statistics.fmean
    out = []
    us, nv, ind = table.get("us3l"), table.get("naive"), table.get("individual")
    if us:
        worst = min(mean(us["knn"][w]) for w in WIDTHS)
        out.append({"goal": "US3L kNN beats raw pixels at every width", "value": round(100 * (worst - raw), 2),
                    "target": "> 0", "met": worst > raw})
    if us and nv:
        d = mean(us["knn"][0.25]) - mean(nv["knn"][0.25])
        out.append({"goal": "US3L - naive at width 0.25 >= +3 points", "value": round(100 * d, 2), "target": ">= 3",
                    "met": 100 * d >= 3})
    if us and ind:
        gap = max(abs(mean(us["knn"][w]) - mean(ind["knn"][w])) for w in WIDTHS)
        out.append({"goal": "US3L vs individual nets: largest gap <= 1.5 points", "value": round(100 * gap, 2),
                    "target": "<= 1.5", "met": 100 * gap <= 1.5})
    return out


def render(table: dict, raw: float, goal_rows: list[dict], wall_s: float, st: Settings) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=80)
    t = Table(title=f"Fashion-MNIST {st.train_size}/{st.test_size}, {st.epochs} ep, {st.seeds} seed(s): accuracy %")
    t.add_column("method")
    for w in WIDTHS:
        t.add_column(f"kNN {w:g}", justify="right")
    for w in LINEAR_WIDTHS:
        t.add_column(f"lin {w:g}", justify="right")
    t.add_row("raw pixels", *([f"{100 * raw:.1f}"] * len(WIDTHS)), "-", "-")
    for kind in ("random", "naive", "us3l", "individual"):
        if kind in table:
            r = table[kind]
            t.add_row(kind, *(_fmt(r["knn"].get(w, [])) for w in WIDTHS), *(_fmt(r["linear"].get(w, [])) for w in LINEAR_WIDTHS))
    console.print(t)
    c = Table(title="collapse monitor (last epoch): std(z/|z|)*sqrt(d) / effective rank")
    c.add_column("method")
    for w in WIDTHS:
        c.add_column(f"w {w:g}", justify="right")
    for kind in ("random", "naive", "us3l", "individual"):
        if kind in table:
            r = table[kind]
            cells = []
            for w in WIDTHS:
                s, e = r["std_ratio"].get(w), r["eff_rank"].get(w)
                cells.append(f"{statistics.fmean(s):.2f} / {statistics.fmean(e):.1f}" if s else "-")
            c.add_row(kind, *cells)
    console.print(c)
    for g in goal_rows:
        console.print(f"{'MET ' if g['met'] else 'MISS'} {g['goal']}: {g['value']:+.2f} (target {g['target']})")
    console.print(f"wall time {wall_s / 60:.1f} min ({st.jobs} parallel job(s), one thread each)")


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-size", type=int, help="first N training images (default 10000)")
    p.add_argument("--test-size", type=int, help="first N test images (default 2000)")
    p.add_argument("--epochs", type=int, help="SSL epochs of every trained network (default 4)")
    p.add_argument("--seeds", type=int, help="number of seeds, 100, 101, ... (default 1)")
    p.add_argument("--first-seed", type=int, default=100, help="the first seed (default 100)")
    p.add_argument("--include", type=Path, action="append", default=[],
                   help="an earlier --json of this script (same protocol) whose runs join the tables; repeatable")
    p.add_argument("--jobs", type=int, help="parallel one-thread processes (default 2)")
    p.add_argument("--data-root", help="full Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--work", help="folder for the subset and checkpoints (default: a temp folder)")
    p.add_argument("--tiny", action="store_true", help="smoke run: 128/64 images, 1 epoch of 1 step, 1 job")
    p.add_argument("--estimate", action="store_true", help="time a few steps per job and predict the wall time")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="wall-time budget for --estimate (default 60)")
    p.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    args = p.parse_args(argv)

    st = Settings(train_size=128, test_size=64, epochs=1, batch_size=32, max_steps_per_epoch=1, calib_batches=1,
                  jobs=1, linear_epochs=2) if args.tiny else Settings()
    given = {k: v for k, v in (("train_size", args.train_size), ("test_size", args.test_size), ("epochs", args.epochs),
                               ("seeds", args.seeds), ("jobs", args.jobs), ("data_root", args.data_root))
             if v is not None}
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="fmnist_claims_")
    st = replace(st, **given, work=args.work if tmp is None else tmp.name)
    if min(st.train_size, st.test_size, st.epochs, st.seeds, st.jobs) < 1:
        print("error: sizes, epochs, seeds and jobs must be >= 1", file=sys.stderr)
        return 2
    from us3l.core.data import write_fashion_mnist_subset
    from us3l.core.errors import US3LError
    from us3l.core.files import atomic_write_json

    jobs = make_jobs(st.seeds, args.first_seed)
    try:  # earlier runs first: a wrong file is refused before any work
        earlier = [j for path in args.include for j in included_jobs(path, st)]
        clash = {j.name for j in jobs} & {j.name for j in earlier}
        if clash:
            raise ValueError(f"--include repeats runs of this invocation ({', '.join(sorted(clash))}); "
                             "choose another --first-seed")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        write_fashion_mnist_subset(st.subset_root, st.train_size, st.test_size, st.data_root)
        if args.estimate:
            print(f"timing on {st.train_size}/{st.test_size} images, batch {st.batch_size}, one thread:")
            est = estimate(st, args.budget_minutes)
            print(f"predicted wall time for {st.epochs} epoch(s), {st.seeds} seed(s), {st.jobs} job(s): "
                  f"{est['predicted_wall_s'] / 60:.1f} min (budget {args.budget_minutes:g} min; "
                  f"at most {est['max_epochs_in_budget']} epoch(s) fit)")
            if args.json:
                atomic_write_json(args.json, {"settings": asdict(st), "estimate": est})
            return 0
        raw = raw_pixel_knn(st)
        if st.jobs == 1:
            _init_worker()
            done = [run_job(j, st) for j in jobs]
        else:
            with ProcessPoolExecutor(st.jobs, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
                futures = {pool.submit(run_job, j, st): i for i, j in enumerate(jobs)}
                finished: dict[int, Job] = {}
                for fut in as_completed(futures):  # one progress line per finished job (the run takes ~40 min)
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
    goal_rows = goals(table, raw)
    render(table, raw, goal_rows, wall_s, st)
    if earlier:
        print(f"(the wall time is this invocation's; {len(earlier)} run(s) came from {', '.join(map(str, args.include))})")
    if args.json:
        atomic_write_json(args.json, {
            "command": " ".join(["python", "perf/fmnist_claims.py", *(sys.argv[1:] if argv is None else argv)]),
            "settings": asdict(st), "wall_s": round(wall_s, 1), "raw_pixels_knn": raw,
            "first_seed": args.first_seed, "included": [str(x) for x in args.include],
            "raw_pixels_knn_issue": RAW_PIXELS_ISSUE,
            "runs": [{"method": j.kind, "seed": j.seed, "width": j.width,
                      **{k: ({str(w): a for w, a in v.items()} if isinstance(v, dict) else v)
                         for k, v in j.result.items()}} for j in done],
            "summary": {k: {m: {str(w): vals for w, vals in d.items()} for m, d in v.items()} for k, v in table.items()},
            "goals": goal_rows,
        })
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
