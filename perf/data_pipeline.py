"""The streaming input pipeline's speed and memory (run by hand: ``python perf/data_pipeline.py``).

Makes synthetic JPEG folders (``--sizes``, default 4,000 and 16,000 images of about 500x375 in 10
class folders; kept in ``--cache`` between runs) and measures:

- **peak memory** of ``us3l train --data imagefolder`` for a fixed number of steps on each folder,
  sampled every 0.1 s: the process tree's summed PSS (pages shared by the forked loader
  processes split between them; the goal's ratio), the summed RSS and the trainer's own peak RSS;
  the ratio largest/smallest folder (goal <= 1.10: memory is bounded by batch x workers x
  prefetch, not by the dataset);
- **first step**: seconds from the command's start to its first progress line on the largest folder
  (goal <= 15 s: nothing is decoded up front), beside the same command on the embedded digits
  (start-up and one step with no files at all, the machine's own floor);
- **loader throughput** in one process: decode + two RandomResizedCrops + flips (what a loader
  worker does per image) against Pillow decoding alone (``Image.open(...).convert("RGB")``) of
  the same files; the ratio (goal >= 0.8). Draft mode lets a JPEG decode at a reduced scale when
  both crops allow it, so the ratio can exceed 1;
- **data-wait fraction** (the share of step time spent waiting for the loader, from
  ``metrics.jsonl``) of a ``us_resnet18_cifar`` run at 64x64 on the smallest folder.

``--gpu`` adds the GPU variant: ``us_resnet50`` at 224x224 (the ``imagenet_r50_byol`` recipe: batch 60,
AMP), channels-last, 14 workers, on CUDA; its data-wait fraction and images/s (``--gpu-only``: that
run alone). ``--tiny``: a smoke run (200/400 images, a few steps; the numbers mean nothing).
Prints one JSON object (last line); ``--json FILE`` writes it too. The machine may be shared with
other jobs: the figures are as measured, under whatever load there was (recorded as ``loadavg``).
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

DISTINCT = 200  # distinct JPEGs per folder
GOALS = {"rss_ratio_max": 1.10, "first_step_s_max": 15.0, "loader_ratio_min": 0.8}


def make_jpegs(root: Path, n: int, classes: int = 10, size: tuple[int, int] = (500, 375), seed: int = 0) -> Path:
    """``root/train/cNN/*.jpg`` (n images) and ``root/val`` (n/10): smooth colour fields plus noise,
    :data:`DISTINCT` distinct images repeated (every file is still opened and decoded on its own)."""
    import numpy as np
    from PIL import Image

    marker = root / f".complete-{n}"
    if marker.is_file():
        return root
    import io

    rng = np.random.default_rng(seed)
    w, h = size
    encoded = []  # DISTINCT distinct images, written round-robin (encoding 20,000 would take long on 2 cores)
    for _ in range(DISTINCT):
        tile = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(tile).resize((w + int(rng.integers(-40, 41)), h + int(rng.integers(-30, 31))),
                                          Image.Resampling.BICUBIC)
        noise = rng.integers(-12, 13, (img.size[1], img.size[0], 3))
        pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
        encoded.append(buf.getvalue())
    for split, count in (("train", n), ("val", max(classes, n // 10))):
        for i in range(count):
            folder = root / split / f"c{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:06d}.jpg").write_bytes(encoded[i % DISTINCT])
    marker.write_text("ok")
    return root


def _tree_memory(pid: int) -> tuple[int, int, int]:
    """``(summed RSS, summed PSS, main process's peak RSS)`` of the process tree, in bytes.

    PSS splits the pages that forked loader processes share with the trainer, so its sum is the
    tree's real footprint; the RSS sum counts shared pages once per process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0, 0
    rss = pss = 0
    for p in procs:
        try:
            full = p.memory_full_info()
            rss += full.rss
            pss += getattr(full, "pss", full.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss, hwm


def run_train(args: list[str], env: dict[str, str]) -> dict:
    """Run ``us3l train`` with plain progress lines; peak RSS of the tree and the first step's time."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "us3l.cli.main", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak, peak_pss, peak_main, first, lines = 0, 0, 0, None, []

    def sample() -> None:
        nonlocal peak, peak_pss, peak_main
        while proc.poll() is None:
            rss, pss, hwm = _tree_memory(proc.pid)
            peak, peak_pss, peak_main = max(peak, rss), max(peak_pss, pss), max(peak_main, hwm)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if first is None and " 1/" in line and line.startswith("training "):
            first = time.perf_counter() - start
    proc.wait()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"us3l train failed ({proc.returncode}): {''.join(lines)[-2000:]}")
    return {"peak_rss_mb": peak / 2**20, "peak_pss_mb": peak_pss / 2**20, "main_peak_rss_mb": peak_main / 2**20,
            "first_step_s": first, "wall_s": time.perf_counter() - start}


def last_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])


def loader_throughput(root: Path, n: int, size: int = 224) -> dict:
    """Images/s in one process: Pillow decode alone vs the worker's decode + two crops (same files)."""
    import numpy as np
    from PIL import Image

    from us3l.core.images import list_split
    from us3l.trainer.pipeline import TwoViewFiles

    from us3l.trainer import pipeline

    paths = list(list_split(root, "train").paths[:n])
    for p in paths:  # warm the page cache for both
        Path(p).read_bytes()

    def best_rate(fn, repeats: int = 3) -> float:  # the best of a few passes: the machine may be shared
        rates = []
        for _ in range(repeats):
            t = time.perf_counter()
            for i, p in enumerate(paths):
                fn(i, p)
            rates.append(len(paths) / (time.perf_counter() - t))
        return max(rates)

    def decode(i: int, p: str) -> None:
        with Image.open(p) as img:
            np.asarray(img.convert("RGB"))

    data = TwoViewFiles(paths, size, (0.2, 1.0), seed=0)

    def crop(i: int, p: str) -> None:
        assert data[(i, 0)][2] is None

    floor = best_rate(decode)
    rates = {}
    for name in ("pillow", "auto"):
        os.environ["US3L_DECODER"] = name
        pipeline.fast_backend.cache_clear()
        if name == "auto" and pipeline.fast_backend() is None:
            continue
        rates[pipeline.decoder_name()] = best_rate(crop)
    os.environ.pop("US3L_DECODER")
    pipeline.fast_backend.cache_clear()
    used = pipeline.decoder_name()
    return {"images": len(paths), "size": size, "pillow_decode_per_s": floor, "decode_crop_per_s": rates,
            "ratio_by_decoder": {k: v / floor for k, v in rates.items()}, "decoder": used,
            "ratio": rates[used] / floor}


def _memory_figures(result: dict, folders_rec: dict, small: str, large: str, steps: int, common: list[str],
                    env: dict[str, str], tmp: Path) -> None:
    result["rss_ratio"] = folders_rec[large]["peak_pss_mb"] / folders_rec[small]["peak_pss_mb"]
    result["rss_ratio_by_measure"] = {k: folders_rec[large][k] / folders_rec[small][k]
                                      for k in ("peak_pss_mb", "peak_rss_mb", "main_peak_rss_mb")}
    result["first_step_s_largest"] = folders_rec[large]["first_step_s"]
    # the same command on the embedded digits (no files at all): start-up + one step on this machine
    result["digits_baseline"] = run_train(["--image-size", "64", "--max-steps-per-epoch", str(steps),
                                           "--out", str(tmp / "digits"), *common], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="4000,16000", help="folder sizes (images), comma-separated")
    ap.add_argument("--steps", type=int, default=20, help="training steps per RSS run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="loader processes (default: the CLI's)")
    ap.add_argument("--wait-steps", type=int, default=10, help="steps of the us_resnet18_cifar data-wait run")
    ap.add_argument("--cache", default=None, help="folder for the synthetic images (default: a temp folder)")
    ap.add_argument("--gpu", action="store_true", help="also the GPU variant (us_resnet50, 224 px, 14 workers)")
    ap.add_argument("--gpu-steps", type=int, default=100)
    ap.add_argument("--gpu-only", action="store_true", help="with --gpu: only the GPU run (folders still made)")
    ap.add_argument("--tiny", action="store_true", help="smoke run: tiny folders and few steps")
    ap.add_argument("--no-loader", action="store_true", help="skip the loader-throughput measurement")
    ap.add_argument("--no-r18", action="store_true", help="skip the us_resnet18_cifar data-wait run")
    ap.add_argument("--json", default=None, help="write the figures here too")
    a = ap.parse_args()
    sizes = [200, 400] if a.tiny else [int(s) for s in a.sizes.split(",")]
    steps, wait_steps = (3, 2) if a.tiny else (a.steps, a.wait_steps)
    cache = Path(a.cache) if a.cache else Path(tempfile.mkdtemp(prefix="us3l-perf-images-"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "US3L_PROGRESS_SECONDS": "0"}
    common = ["--epochs", "1", "--batch-size", str(a.batch_size), "--threads", "1", "--set", "log_interval=1",
              "--set", "tensorboard=false", "--set", "collapse_batch=32"]
    if a.workers is not None:
        common += ["--workers", str(a.workers)]
    from us3l.trainer.pipeline import decoder_name

    result: dict = {"decoder": decoder_name(), "tiny": a.tiny, "loadavg_start": os.getloadavg(), "cpus": os.cpu_count(), "goals": GOALS,
                    "argv": sys.argv[1:], "folders": {}}
    t = time.perf_counter()
    folders = {n: make_jpegs(cache / f"jpeg{n}", n) for n in sizes}
    result["make_folders_s"] = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        for n, root in ({} if a.gpu_only else folders).items():
            out = Path(tmp) / f"run{n}"
            rec = run_train(["--data", "imagefolder", "--data-root", str(root), "--image-size", "64",
                             "--max-steps-per-epoch", str(steps), "--out", str(out), *common], env)
            rec["data_wait"] = last_metrics(out)["data_wait"]
            result["folders"][str(n)] = rec
        small, large = str(min(sizes)), str(max(sizes))
        folders_rec = result["folders"]
        if a.gpu_only:
            a.no_loader = a.no_r18 = True
        else:
            _memory_figures(result, folders_rec, small, large, steps, common, env, Path(tmp))
        if not a.no_loader:
            result["loader"] = loader_throughput(folders[min(sizes)], 40 if a.tiny else 400)
        if not a.no_r18:
            out = Path(tmp) / "r18"
            rec = run_train(["--data", "imagefolder", "--data-root", str(folders[min(sizes)]), "--arch",
                             "us_resnet18_cifar", "--image-size", "64", "--max-steps-per-epoch", str(wait_steps),
                             "--out", str(out), *common], env)
            m = last_metrics(out)
            result["r18_64px"] = {**rec, "data_wait": m["data_wait"], "images_per_s": m["images_per_s"]}
        if a.gpu:
            out = Path(tmp) / "gpu"
            # the recipe's batch (60 per GPU), AMP and channels-last; the loader as the issue asks: 14 workers
            rec = run_train(["--recipe", "imagenet_r50_byol", "--data-root", str(folders[max(sizes)]),
                             "--image-size", "224", "--device", "cuda", "--workers", "14", "--channels-last",
                             "--epochs", "1", "--max-steps-per-epoch", str(3 if a.tiny else a.gpu_steps),
                             "--set", "log_interval=1", "--set", "tensorboard=false", "--out", str(out)], env)
            m = last_metrics(out)
            result["gpu_r50_224px"] = {**rec, "data_wait": m["data_wait"], "images_per_s": m["images_per_s"]}
    result["loadavg_end"] = os.getloadavg()
    result["pass"] = {}
    if "rss_ratio" in result:
        result["pass"] = {"rss_ratio": result["rss_ratio"] <= GOALS["rss_ratio_max"],
                          "first_step": (result["first_step_s_largest"] or 1e9) <= GOALS["first_step_s_max"]}
    if "loader" in result:
        result["pass"]["loader_ratio"] = result["loader"]["ratio"] >= GOALS["loader_ratio_min"]
    for n, rec in result["folders"].items():
        print(f"{n:>6} images: peak PSS {rec['peak_pss_mb']:.0f} MB (RSS sum {rec['peak_rss_mb']:.0f}, main "
              f"{rec['main_peak_rss_mb']:.0f}), first step {rec['first_step_s']:.1f} s, data wait {rec['data_wait']:.0%}",
              file=sys.stderr)
    if "rss_ratio" in result:
        print(f"memory ratio {result['rss_ratio']:.3f} (goal <= 1.10); digits baseline first step "
              f"{result['digits_baseline']['first_step_s']:.1f} s", file=sys.stderr)
    if "loader" in result:
        loader = result["loader"]
        print(f"loader ratio {loader['ratio']:.2f} with {loader['decoder']} ({loader['ratio_by_decoder']}; floor "
              f"{loader['pillow_decode_per_s']:.0f} img/s; goal >= 0.8)", file=sys.stderr)
    if "r18_64px" in result:
        print(f"us_resnet18_cifar 64 px data wait {result['r18_64px']['data_wait']:.1%}", file=sys.stderr)
    if "gpu_r50_224px" in result:
        g = result["gpu_r50_224px"]
        print(f"us_resnet50 224 px, 14 workers, CUDA: data wait {g['data_wait']:.1%}, {g['images_per_s']:.0f} img/s",
              file=sys.stderr)
    text = json.dumps(result)
    if a.json:
        Path(a.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
