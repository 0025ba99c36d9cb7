"""Peak memory of ``us3l finetune`` and ``us3l eval`` on image folders of two sizes (run by hand:
``python perf/task_pipeline.py``).

Both commands stream image files through the training pipeline's loader processes (issue 24,
item 4), so their memory must not grow with the number of files. For each folder size (``--sizes``,
default 2,000 and 16,000 synthetic JPEGs of about 500x375 in 10 class folders, made by
``perf/data_pipeline.py``'s :func:`make_jpegs` and kept in ``--cache``) this runs

- ``us3l finetune`` of a freshly initialised ``us_resnet_mini`` checkpoint: ``--steps`` steps of
  ``--batch-size`` full-image crops, then BN recalibration and top-1 at two widths on the whole
  ``val/`` split (a tenth of the folder);
- ``us3l eval`` (kNN at width 1.0): BN recalibration, then features of the *whole* training and
  validation splits (the kNN bank grows by 2 bytes per feature per image: 256 KiB per 1,000 images
  at 128 features, a fraction of a percent of the process);

and samples the process tree every 0.1 s: summed PSS (pages the forked loader processes share with
the main process split between them; the goal's measure), summed RSS and the main process's peak
RSS. Goal: peak PSS on the largest folder / on the smallest <= 1.10 for each command.

Prints one JSON object (last line); ``--json FILE`` writes it too. ``--tiny``: 200/400 images, a
few steps (a smoke run; the numbers mean nothing). The machine may be shared: the load average at
the start and end is recorded beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts, however this one is started
from data_pipeline import _tree_memory, make_jpegs  # noqa: E402

GOALS = {"finetune_ratio_max": 1.10, "eval_ratio_max": 1.10}


def run_measured(args: list[str], env: dict[str, str]) -> dict:
    """Run ``us3l ARGS``; the peak memory of its process tree (sampled every 0.1 s) and its wall time."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "us3l.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak = peak_pss = peak_main = procs = 0

    def sample() -> None:
        nonlocal peak, peak_pss, peak_main, procs
        import psutil

        while proc.poll() is None:
            rss, pss, hwm = _tree_memory(proc.pid)
            peak, peak_pss, peak_main = max(peak, rss), max(peak_pss, pss), max(peak_main, hwm)
            try:
                procs = max(procs, 1 + len(psutil.Process(proc.pid).children(recursive=True)))
            except psutil.NoSuchProcess:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"us3l {args[0]} failed ({proc.returncode}): {err[-2000:]}")
    return {"peak_pss_mb": peak_pss / 2**20, "peak_rss_mb": peak / 2**20, "main_peak_rss_mb": peak_main / 2**20,
            "processes": procs, "wall_s": time.perf_counter() - start, "stdout_tail": out[-400:]}


def make_checkpoint(path: Path, image_size: int) -> Path:
    """A freshly initialised ``us_resnet_mini`` SSL checkpoint (memory does not depend on its weights)."""
    import torch

    from us3l.core.checkpoint import Checkpoint, save_checkpoint
    from us3l.core.data import DatasetSpec
    from us3l.core.models import get_model

    torch.manual_seed(0)
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini", input_size=image_size), method="us3l",
                                          dataset=DatasetSpec("digits").to_dict()), path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2000,16000", help="folder sizes (images), comma-separated")
    ap.add_argument("--steps", type=int, default=20, help="fine-tuning steps per run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="loader processes (default: the CLI's)")
    ap.add_argument("--cache", default=None, help="folder for the synthetic images (default: a temp folder)")
    ap.add_argument("--commands", default="finetune,eval", help="which commands to measure")
    ap.add_argument("--tiny", action="store_true", help="smoke run: tiny folders and few steps")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args()
    sizes = [200, 400] if a.tiny else [int(s) for s in a.sizes.split(",")]
    steps = 3 if a.tiny else a.steps
    commands = [c.strip() for c in a.commands.split(",") if c.strip()]
    cache = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix="us3l-perf-images-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "US3L_PROGRESS_SECONDS": "0"}
    workers = ["--workers", str(a.workers)] if a.workers is not None else []
    result: dict = {"tiny": a.tiny, "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "goals": GOALS,
                    "argv": sys.argv[1:], "runs": {c: {} for c in commands}}
    t = time.perf_counter()
    folders = {n: make_jpegs(cache / f"jpeg{n}", n) for n in sizes}
    result["make_folders_s"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        for n, root in folders.items():
            data = ["--data", "imagefolder", "--data-root", str(root), "--image-size", str(a.image_size)]
            if "finetune" in commands:
                ckpt = make_checkpoint(Path(tmp) / f"ft{n}" / "checkpoint.pt", a.image_size)
                result["runs"]["finetune"][str(n)] = run_measured(
                    ["finetune", str(ckpt), *data, "--epochs", "1", "--max-steps-per-epoch", str(steps),
                     "--batch-size", str(a.batch_size), "--widths", "0.25,1.0", "--json", *workers], env)
            if "eval" in commands:
                ckpt = make_checkpoint(Path(tmp) / f"ev{n}" / "checkpoint.pt", a.image_size)
                result["runs"]["eval"][str(n)] = run_measured(
                    ["eval", str(ckpt), *data, "--widths", "1.0", "--calib-batches", "2", "--batch-size", "64",
                     "--json", *workers], env)
    small, large = str(min(sizes)), str(max(sizes))
    result["ratios"], result["pass"] = {}, {}
    for c in commands:
        runs = result["runs"][c]
        ratio = runs[large]["peak_pss_mb"] / runs[small]["peak_pss_mb"]
        result["ratios"][c] = {"peak_pss": ratio, **{k: runs[large][k] / runs[small][k]
                                                     for k in ("peak_rss_mb", "main_peak_rss_mb")}}
        result["pass"][c] = ratio <= GOALS[f"{c}_ratio_max"]
        for n, rec in runs.items():
            print(f"{c:>8} {n:>6} images: peak PSS {rec['peak_pss_mb']:.0f} MB (RSS sum {rec['peak_rss_mb']:.0f}, "
                  f"main {rec['main_peak_rss_mb']:.0f}, {rec['processes']} processes), {rec['wall_s']:.1f} s",
                  file=sys.stderr)
        print(f"{c:>8} memory ratio {large}/{small}: {ratio:.3f} (goal <= 1.10)", file=sys.stderr)
    result["loadavg_end"] = os.getloadavg()
    text = json.dumps(result)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
