"""The full Fashion-MNIST comparison on one GPU (run by hand: ``python perf/gpu_fmnist.py --minutes 7``).

The 60,000 / 10,000 images at 28 px, the same protocol as ``perf/fmnist_claims.py`` (gray views,
the ``fashion_mnist`` recipe's model and heads, kNN k=20 per width, linear probe at 0.25 and 1.0,
learning curves every epoch) for the three methods whose gap is the paper's claim: US3L, the
reference's naive configuration and naive-contrastive (plus random init and the raw pixels, which
cost no training). It is built for one large GPU:

1. **Throughput estimate** (``--estimate-seconds``, 30 by default): the three trainings start at
   once, as in the real run, each on its own process sharing the GPU; after a few warm-up steps
   each counts the images it trains in the time given, then times one learning-curve point.
2. **Epochs sized to the time given** (``--minutes``, training time): the slowest process sets the
   pace, ``epochs = floor(minutes * 60 / (train_size / its img/s + curve point))``; ``--epochs``
   overrides it.
3. **The comparison**: three processes at once (one per method), AMP (CUDA autocast + GradScaler)
   and ``channels_last``, then per-width evaluation on the GPU; the same tables as
   ``perf/fmnist_claims.py`` (accuracy with both pixel rows, learning curves, US3L - naive slope,
   collapse monitor, goals), ``--json`` and ``--plot``.

Batch 256 with the learning rate scaled linearly from the recipe's 0.1 at 128 (``--batch-size``
scales it the same way). ``--tiny --device cpu`` is the smoke run the test suite uses: 256 / 128
images, 2 steps per epoch, a 1-second estimate, 2 epochs at most, three processes on the CPU (no AMP
off CUDA).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist_claims as fc  # the shared protocol, tables and plot

METHODS = ("us3l", "naive", "naive-contrastive")
RECIPE_LR, RECIPE_BATCH = 0.1, 128


def _worker_init(threads: int) -> None:
    import logging

    import torch

    torch.set_num_threads(max(1, threads))
    logging.basicConfig(level=logging.WARNING)


def _estimate_one(args: tuple[str, fc.Settings, float]) -> dict:
    """Train ``kind`` for ``seconds`` after warm-up (in a worker; the three run at once); img/s and
    the seconds of one learning-curve point."""
    import torch

    from us3l.trainer.loop import Trainer

    kind, st, seconds = args
    job = fc.Job(kind, 100)
    tr = Trainer(st.train_config(job.method, 100, job.width, Path(st.work) / "estimate" / kind))
    chunk = max(1, min(5, tr.steps_per_epoch))  # never past the data's last full batch
    tr.steps_per_epoch = min(3, chunk)
    tr._train_epoch(0, 1000)  # warm-up: cudnn autotuning, allocator, first kernels
    tr.steps_per_epoch = chunk
    done, t0 = 0, time.perf_counter()
    while True:
        tr._train_epoch(1, 1000)  # ends on a host sync (the finite check)
        done += chunk * tr.batch
        if time.perf_counter() - t0 >= seconds:
            break
    if tr.device.type == "cuda":
        torch.cuda.synchronize(tr.device)
    ips = done / (time.perf_counter() - t0)
    curve_s = 0.0
    if tr.monitor is not None:
        t1 = time.perf_counter()
        tr.monitor(tr.raw_model.backbone)
        curve_s = time.perf_counter() - t1
    return {"kind": kind, "img_per_s": ips, "curve_point_s": curve_s}


def estimate(pool, st: fc.Settings, seconds: float, minutes: float) -> dict:
    """Run the three estimates at once on ``pool``; the epochs that fit ``minutes`` of training."""
    rows = pool.map(_estimate_one, [(k, st, seconds) for k in METHODS])
    per_epoch = {r["kind"]: st.train_size / r["img_per_s"] + (r["curve_point_s"] if st.eval_every else 0.0)
                 for r in rows}
    slowest = max(per_epoch.values())
    epochs = max(1, math.floor(minutes * 60 / slowest))
    return {"img_per_s": {r["kind"]: round(r["img_per_s"], 1) for r in rows},
            "curve_point_s": {r["kind"]: round(r["curve_point_s"], 2) for r in rows},
            "epoch_s": {k: round(v, 2) for k, v in per_epoch.items()}, "seconds": seconds,
            "minutes": minutes, "epochs": epochs}


def _run_one(args: tuple[fc.Job, fc.Settings]) -> fc.Job:
    job, st = args
    return fc.run_job(job, st)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=7.0, help="training time the epochs are sized to (default 7)")
    p.add_argument("--estimate-seconds", type=float, help="length of the throughput estimate (default 30)")
    p.add_argument("--epochs", type=int, help="skip the sizing: train this many epochs")
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--batch-size", type=int, help="images per step (default 256; the lr scales linearly)")
    p.add_argument("--image-size", type=int, help="side in pixels (default 28, native)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: the cores / 3)")
    p.add_argument("--seed", type=int, default=100, help="seed of the three trainings (default 100)")
    p.add_argument("--data-root", help="Fashion-MNIST IDX folder (default /usr/share/datasets/fashion-mnist)")
    p.add_argument("--work", help="folder for the data copy and checkpoints (default: a temp folder)")
    p.add_argument("--tiny", action="store_true", help="smoke run: 128/64 images, 1-s estimate, at most 2 epochs of 2 steps")
    p.add_argument("--plot", type=Path, help="write the learning curves as a PNG here")
    p.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    args = p.parse_args(argv)

    import os

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: --device {args.device}: CUDA is not available here; valid here: cpu (e.g. --tiny --device cpu)",
              file=sys.stderr)
        return 2
    on_gpu = args.device.startswith("cuda")
    batch = args.batch_size or (32 if args.tiny else 256)
    if batch < 2 or args.minutes <= 0 or (args.epochs is not None and args.epochs < 1):
        print("error: --batch-size must be >= 2, --minutes > 0 and --epochs >= 1", file=sys.stderr)
        return 2
    threads = args.threads or max(1, (os.cpu_count() or 3) // len(METHODS))
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="gpu_fmnist_")
    work = args.work or tmp.name  # type: ignore[union-attr]
    st = fc.Settings(train_size=60_000, test_size=10_000, image_size=args.image_size or 28, batch_size=batch,
                     lr=RECIPE_LR * batch / RECIPE_BATCH, jobs=len(METHODS), work=work, data_root=args.data_root,
                     device=args.device, amp=on_gpu, channels_last=on_gpu, threads=threads, eval_batch=1024)
    if args.tiny:
        st = replace(st, train_size=128, test_size=64, calib_batches=1, eval_batch=64, linear_epochs=2,
                     eval_images=32, eval_bank=64, max_steps_per_epoch=2)
    seconds = args.estimate_seconds if args.estimate_seconds is not None else (1.0 if args.tiny else 30.0)
    from us3l.core.data import write_fashion_mnist_subset
    from us3l.core.errors import US3LError
    from us3l.core.files import atomic_write_json

    start = time.perf_counter()
    train_wall = 0.0
    try:
        write_fashion_mnist_subset(st.subset_root, st.train_size, st.test_size, st.data_root)
        est = None
        ctx = get_context("spawn")
        with ctx.Pool(len(METHODS), initializer=_worker_init, initargs=(threads,)) as pool:
            if args.epochs is None:
                print(f"throughput estimate: {len(METHODS)} processes at once for {seconds:g}s on {args.device} "
                      f"(batch {batch}, AMP {'on' if st.amp else 'off'}, "
                      f"channels_last {'on' if st.channels_last else 'off'})", flush=True)
                est = estimate(pool, replace(st, epochs=1), seconds, args.minutes)
                for k in METHODS:
                    print(f"  {k:18s} {est['img_per_s'][k]:9.1f} img/s, {est['epoch_s'][k]:7.1f} s/epoch with its "
                          "curve point")
                epochs = min(est["epochs"], 2) if args.tiny else est["epochs"]
                print(f"{epochs} epoch(s) fit {args.minutes:g} min of training", flush=True)
            else:
                epochs = args.epochs
            st = replace(st, epochs=epochs)
            jobs = [fc.Job(k, args.seed) for k in METHODS]
            t_train = time.perf_counter()
            pending = pool.map_async(_run_one, [(j, st) for j in jobs])
            raw = fc.raw_pixels(st)  # on this process's CPU while the three train
            done = pending.get()
            train_wall = time.perf_counter() - t_train
        done.append(fc.run_job(fc.Job("random", args.seed), st))
    except US3LError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    wall_s = time.perf_counter() - start
    table = fc.summarise(done)
    tr = fc.trend(done, max(3, st.epochs // 2))
    goal_rows = fc.goals(table, raw, tr)
    fc.render(table, raw, tr, goal_rows, wall_s, replace(st, seeds=1))
    print(f"the three trainings and their evaluation took {train_wall / 60:.1f} min at once on {args.device}")
    if args.plot:
        print(f"learning curves: {fc.plot(table, raw, tr, st, args.plot)}")
    if args.json:
        atomic_write_json(args.json, {
            "command": " ".join(["python", "perf/gpu_fmnist.py", *(sys.argv[1:] if argv is None else argv)]),
            "settings": asdict(st), "estimate": est, "wall_s": round(wall_s, 1), "train_wall_s": round(train_wall, 1),
            "device": torch.cuda.get_device_name(0) if on_gpu else "cpu", "raw_pixels": raw,
            "runs": [{"method": j.kind, "seed": j.seed, "width": j.width,
                      **{k: ({str(w): a for w, a in v.items()} if isinstance(v, dict) else v)
                         for k, v in j.result.items()}} for j in done],
            "trend": tr, "goals": goal_rows,
        })
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
