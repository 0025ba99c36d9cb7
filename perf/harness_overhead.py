"""Harness overhead and ``us3l bench`` wall time (run by hand).

1. Overhead: our ``onnxruntime`` runner's p50 divided by a bare ONNX Runtime loop's p50, on the
   same ``InferenceSession`` and the same input, measured in one process in interleaved blocks
   (goal <= 1.03).
2. ``us3l bench --arch us_resnet18_cifar --device cpu --widths 0.25:1.0:0.05``: cold (fresh
   output dir, export included; goal <= 90 s) and cached (same dir again; goal <= 5 s), as
   subprocesses timed from the outside.

Usage::

    python perf/harness_overhead.py --out harness-out [--width 0.5] [--blocks 10] [--skip-bench]

Prints a summary and writes ``<out>/harness_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from us3l.core.files import atomic_write_text


def overhead(out: Path, width: float, blocks: int, runs: int, threads: int | None) -> dict:
    """Interleaved blocks of our runner vs a bare ``sess.run`` loop on the same session and feed."""
    from us3l.benchmarks.artifacts import ModelSource, prepare_artifacts
    from us3l.benchmarks.runners import RunnerOptions, TimingConfig, get_runner

    art = prepare_artifacts(ModelSource(arch="us_resnet18_cifar"), [width], out)[0]
    timing = TimingConfig(warmup_ms=0, iterations=runs, rounds=1, rewarm_ms=0)
    ours: list[float] = []
    bare: list[float] = []
    with get_runner("onnxruntime")(art, RunnerOptions(threads=threads)) as runner:
        runner.measure(1, TimingConfig(warmup_ms=500, iterations=runs, rounds=1))  # warm-up, discarded
        sess, feed = runner.session, runner.native_feed(1)
        clock = time.perf_counter
        for b in range(blocks):
            order = ("ours", "bare") if b % 2 == 0 else ("bare", "ours")
            for who in order:
                if who == "ours":
                    ours.extend(runner.measure(1, timing))
                else:
                    for _ in range(runs):
                        t0 = clock()
                        sess.run(None, feed)
                        bare.append((clock() - t0) * 1e3)
    p_ours, p_bare = float(np.median(ours)), float(np.median(bare))
    return {"width": width, "blocks": blocks, "runs_per_block": runs, "threads": threads,
            "ours_p50_ms": p_ours, "bare_p50_ms": p_bare, "ratio": p_ours / p_bare, "goal": 1.03}


def bench_wall(out: Path, widths: str) -> dict:
    """Wall time of a cold then a cached ``us3l bench`` run in ``out/bench``."""
    target = out / "bench"
    shutil.rmtree(target, ignore_errors=True)
    cmd = [sys.executable, "-m", "us3l.cli.main", "bench", "--arch", "us_resnet18_cifar", "--device", "cpu",
           "--widths", widths, "--out", str(target)]
    result = {"command": " ".join(cmd[2:]).replace("us3l.cli.main", "us3l")}
    for label in ("cold", "cached"):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        result[f"{label}_s"] = round(time.perf_counter() - start, 2)
        if proc.returncode != 0:
            raise SystemExit(f"us3l bench failed ({label}): {proc.stderr.strip()[-500:]}")
    report = json.loads((target / "report.json").read_text())
    result["rows"] = [{"width": r["width"], "macs": r["macs"], "p50_ms": round(r["p50_ms"], 3),
                       "p95_ms": round(r["p95_ms"], 3), "cached": r["cached"]} for r in report["results"]]
    result["goals_s"] = {"cold": 90, "cached": 5}
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("harness-out"))
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--runs", type=int, default=200, help="runs per block")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--widths", default="0.25:1.0:0.05")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": {"platform": platform.platform(), "python": platform.python_version()},
              "overhead": overhead(args.out, args.width, args.blocks, args.runs, args.threads)}
    o = result["overhead"]
    print(f"overhead: ours p50 {o['ours_p50_ms']:.4f} ms / bare p50 {o['bare_p50_ms']:.4f} ms = {o['ratio']:.4f} "
          f"(goal <= 1.03)")
    if not args.skip_bench:
        result["bench"] = bench_wall(args.out, args.widths)
        b = result["bench"]
        print(f"us3l bench cold {b['cold_s']} s (goal <= 90), cached {b['cached_s']} s (goal <= 5)")
        for row in b["rows"]:
            print(f"  width {row['width']:<5} p50 {row['p50_ms']:8.3f} ms  p95 {row['p95_ms']:8.3f} ms")
    path = args.out / "harness_overhead.json"
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
