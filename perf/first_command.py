"""README command 1's job, quiet and beside a CPU load (run by hand; not part of the test suite).

The README's first command installs the tool and then runs ``us3l train``, ``us3l eval``,
``us3l export`` and ``us3l bench`` with the arguments written there. This script runs those four
steps (with the installed ``us3l``, default threads) in a fresh folder twice: with nothing started
by the script ("quiet": the machine's own load is recorded, it may not be idle), and beside
``--busy`` processes (default 2) that each keep one CPU busy, started and stopped here. It reports
each step's time, the totals and their ratio (the goal: loaded <= 2x quiet), with the load average
before and after every step.

``--epochs`` shortens training for a quicker check (the README's job is the recipe's 13 epochs);
``--order busy,quiet`` runs the loaded case first.

Usage::

    python perf/first_command.py --json first_command.json [--busy 2] [--epochs 13]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, as a file or with python -m
from threads import busy_processes, clean_env, loadavg, run_timed  # noqa: E402


def steps(epochs: int | None) -> list[tuple[str, list[str]]]:
    """README command 1 after the install, step by step (its exact arguments)."""
    train = ["train"] + (["--epochs", str(epochs)] if epochs else [])
    return [
        ("train", train),
        ("eval", ["eval", "runs/us3l/checkpoint.pt"]),
        ("export", ["export", "runs/us3l/checkpoint.pt", "--widths", "0.25:1.0:0.25", "--out", "runs/us3l/onnx"]),
        ("bench", ["bench", "runs/us3l/checkpoint.pt", "--device", "cpu", "--widths", "0.25:1.0:0.25", "--budget-ms",
                   "2", "--out", "runs/us3l/bench"]),
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's, 13)")
    ap.add_argument("--order", default="quiet,busy")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    print(f"{cpus} CPU(s); load average {loadavg()} at start", flush=True)
    cases: dict[str, dict] = {}
    for case in args.order.split(","):
        work = Path(tempfile.mkdtemp(prefix=f"us3l-first-{case}-"))
        n_busy = args.busy if case == "busy" else 0
        rows = []
        with busy_processes(n_busy):
            for name, argv in steps(args.epochs):
                before = loadavg()
                secs, rc = run_timed(argv, clean_env(), work, work / "log.txt", args.timeout)
                rows.append({"step": name, "seconds": round(secs, 1), "exit": rc, "loadavg_before": before,
                             "loadavg_after": loadavg()})
                print(f"{case:5s} {name:6s} {secs:7.1f} s  exit {rc}  load {before}->{rows[-1]['loadavg_after']}",
                      flush=True)
                if rc:
                    print((work / "log.txt").read_text()[-3000:])
                    raise SystemExit(f"{case} {name} failed (exit {rc})")
        report = json.loads((work / "runs/us3l/bench/report.json").read_text())
        chosen = report.get("chosen") or {}
        cases[case] = {"busy_processes": n_busy, "steps": rows, "total_s": round(sum(r["seconds"] for r in rows), 1),
                       "bench_threads": report.get("threads"), "bench_unstable": report.get("unstable"),
                       "chosen_width": chosen.get("width")}
        shutil.rmtree(work, ignore_errors=True)
    out = {"cpus": cpus, "epochs": args.epochs or 13, "cases": cases, "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    if "quiet" in cases and "busy" in cases:
        out["ratio"] = round(cases["busy"]["total_s"] / cases["quiet"]["total_s"], 2)
        out["goal"] = "beside the load <= 2x the quiet time"
        out["goal_met"] = out["ratio"] <= 2.0
    print()
    print("| step | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for i, (name, _) in enumerate(steps(args.epochs)):
        print(f"| {name} | " + " | ".join(f"{c['steps'][i]['seconds']:.1f} s" for c in cases.values()) + " |")
    print("| total | " + " | ".join(f"{c['total_s']:.1f} s" for c in cases.values()) + " |")
    for name, c in cases.items():
        loads = [r["loadavg_before"] for r in c["steps"]] + [c["steps"][-1]["loadavg_after"]]
        print(f"{name}: load average {min(loads)}-{max(loads)}, bench threads {c['bench_threads']}, "
              f"bench unstable {c['bench_unstable']}, chosen width {c['chosen_width']}")
    if "ratio" in out:
        print(f"ratio busy/quiet: {out['ratio']}x (goal <= 2x: {'met' if out['goal_met'] else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
