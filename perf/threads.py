"""CPU threads on a shared machine: default vs 1 vs N threads, quiet and beside a CPU load, for
``us3l train``, ``finetune``, ``eval``, ``export`` and ``bench`` (run by hand; not part of the suite).

Each command runs on tiny but representative settings (the digits default network, a few steps,
two widths) as a subprocess, with each thread setting, first with nothing else started by this
script ("quiet": the machine's own load is recorded, it may not be idle) and then beside
``--busy`` processes (default 2) that each keep one CPU busy, started and stopped here. Settings:

- ``pytorch``: the old default, one thread per CPU with OpenMP's default spin-then-sleep waiting
  (``--threads N``, ``GOMP_SPINCOUNT=300000``, libgomp's own default);
- ``1``: ``--threads 1``;
- ``N-passive``: ``--threads N`` with ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep);
- ``auto``: no option, the product default (us3l.core.threads: the command sets passive waiting,
  then one thread per usable CPU);
- ``auto-spin``: no option, but OpenMP spinning (``GOMP_SPINCOUNT=300000``, as when torch was
  imported before us3l could ask for passive waiting): auto then uses one thread per CPU that other
  processes leave idle, re-measured while it runs.

Reported per command and load: the wall time of each setting (median of ``--repeats``), its ratio
to the fastest setting in that case, and the worst ratio per setting over everything. A run still
going after ``--timeout`` seconds is stopped; its time and ratio are lower bounds (``>``). The goal:
the default never more than 1.5x slower than the best, quiet or loaded. Settings rotate their order
per command so drift does not favour one.

Usage::

    python perf/threads.py --json threads.json [--repeats 1] [--busy 2] [--commands train,eval]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# ---------------------------------------------------------------- shared with perf/first_command.py

#: environment variables that decide threads; removed so that each run states its own
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "US3L_ONNX_EXPORTER",
              "US3L_PROGRESS_SECONDS")
BUSY_CODE = "while True: pass"


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[int]]:
    """``n`` processes that each keep one CPU busy (a pure-Python spin) for the block."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_CODE], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # let the scheduler see them
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait()


def loadavg() -> float:
    """The 1-minute load average (what ``uptime`` shows first)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return float("nan")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without thread settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(extra or {})
    return env


def us3l_command() -> list[str]:
    """How to start the ``us3l`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("us3l")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "us3l.cli.main"]


def run_timed(args: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float) -> tuple[float, int]:
    """Run ``us3l ARGS``; returns ``(wall seconds, exit code)``; output goes to ``log``."""
    t0 = time.perf_counter()
    with log.open("ab") as fh:
        fh.write(f"$ us3l {' '.join(args)}\n".encode())
        fh.flush()
        try:
            rc = subprocess.run(us3l_command() + args, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return time.perf_counter() - t0, rc


# ---------------------------------------------------------------- this script

COMMANDS = ("train", "finetune", "eval", "export", "bench")
VARIANTS = ("pytorch", "1", "auto", "auto-spin")
ALL_VARIANTS = ("pytorch", "1", "N-passive", "auto", "auto-spin")


def variant(name: str, cpus: int) -> tuple[list[str], dict[str, str]]:
    """``(extra arguments, extra environment)`` of a thread setting."""
    if name == "pytorch":
        return ["--threads", str(cpus)], {"GOMP_SPINCOUNT": "300000"}
    if name == "1":
        return ["--threads", "1"], {}
    if name == "N-passive":
        return ["--threads", str(cpus)], {"OMP_WAIT_POLICY": "PASSIVE"}
    if name == "auto":
        return [], {}
    if name == "auto-spin":
        return [], {"GOMP_SPINCOUNT": "300000"}
    raise SystemExit(f"unknown setting {name!r}; valid: {', '.join(ALL_VARIANTS)}")


def command(name: str, base: Path, out: Path) -> list[str]:
    """The tiny but representative invocation of ``name`` (a fresh output folder ``out``)."""
    ckpt = str(base / "checkpoint.pt")
    if name == "train":
        return ["train", "--epochs", "1", "--max-steps-per-epoch", "16", "--out", str(out)]
    if name == "finetune":
        return ["finetune", ckpt, "--epochs", "1", "--max-steps-per-epoch", "10", "--out", str(out)]
    if name == "eval":
        return ["eval", ckpt, "--widths", "0.25,1.0", "--calib-batches", "5"]
    if name == "export":
        return ["export", ckpt, "--widths", "0.25,1.0", "--out", str(out)]
    if name == "bench":
        return ["bench", ckpt, "--widths", "0.25,1.0", "--duration", "0.5", "--rounds", "3", "--no-plot",
                "--out", str(out)]
    raise SystemExit(f"unknown command {name!r}; valid: {', '.join(COMMANDS)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: the busy processes and the running command are stopped


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--loads", default="quiet,busy", help="quiet and/or busy")
    ap.add_argument("--busy", type=int, default=2, help="busy processes in the loaded case")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds after which a run is stopped; its time counts as a lower bound ('>')")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    commands, variants = args.commands.split(","), args.variants.split(",")
    loads = args.loads.split(",")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    work = args.keep or Path(tempfile.mkdtemp(prefix="us3l-threads-"))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.log"
    base = work / "base"
    print(f"{cpus} CPU(s); work folder {work}; load average {loadavg()} at start", flush=True)
    if not (base / "checkpoint.pt").is_file():
        secs, rc = run_timed(["train", "--epochs", "1", "--max-steps-per-epoch", "6", "--threads", "1",
                              "--out", str(base)], clean_env(), work, log, args.timeout)
        if rc:
            raise SystemExit(f"preparing the checkpoint failed (exit {rc}); see {log}")
    results: list[dict] = []
    busy_pids: list[int] = []
    for load in loads:
        n_busy = args.busy if load == "busy" else 0
        with busy_processes(n_busy) as pids:
            busy_pids += pids
            for r in range(args.repeats):
                for c_i, cmd in enumerate(commands):
                    order = variants[c_i % len(variants):] + variants[:c_i % len(variants)]  # rotate per command
                    for v in order:
                        extra, env = variant(v, cpus)
                        out = work / "out" / f"{load}-{cmd}-{v}-{r}"
                        shutil.rmtree(out, ignore_errors=True)
                        before = loadavg()
                        secs, rc = run_timed(command(cmd, base, out) + extra, clean_env(env), work, log, args.timeout)
                        row = {"load": load, "busy_processes": n_busy, "command": cmd, "setting": v, "repeat": r,
                               "seconds": round(secs, 2), "exit": rc, "loadavg_before": before,
                               "loadavg_after": loadavg()}
                        if cmd == "bench" and rc == 0:
                            report = json.loads((out / "report.json").read_text())
                            row["bench_threads"] = report.get("threads")
                            row["p50_ms"] = {str(x["width"]): round(x["p50_ms"], 4) for x in report["results"]}
                        results.append(row)
                        print(f"{load:5s} {cmd:8s} {v:9s} {secs:7.1f} s  exit {rc}  load {before}->{row['loadavg_after']}",
                              flush=True)
    summary = summarise(results, commands, variants, loads)
    print_table(summary, commands, variants, loads)
    if args.json:
        args.json.write_text(json.dumps({"cpus": cpus, "busy_processes": args.busy, "busy_pids": busy_pids,
                                         "repeats": args.repeats,
                                         "runs": results, "summary": summary,
                                         "measured_at": time.strftime("%Y-%m-%d %H:%M")}, indent=2))
        print(f"wrote {args.json}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


def summarise(results: list[dict], commands: list[str], variants: list[str], loads: list[str]) -> dict:
    """Median seconds per (load, command, setting), ratios to the best, the worst ratio per setting."""
    cells: dict[str, dict] = {}
    worst = {v: 0.0 for v in variants}
    for load in loads:
        for cmd in commands:
            med, capped = {}, {}
            for v in variants:
                mine = [r for r in results if (r["load"], r["command"], r["setting"]) == (load, cmd, v)]
                ok = [r["seconds"] for r in mine if r["exit"] in (0, 124)]  # 124: stopped at --timeout (a lower bound)
                med[v] = statistics.median(ok) if ok else None
                capped[v] = any(r["exit"] == 124 for r in mine)
            best = min((s for v, s in med.items() if s is not None and not capped[v]), default=None)
            for v in variants:
                ratio = med[v] / best if med[v] is not None and best else None
                cells[f"{load}/{cmd}/{v}"] = {"seconds": med[v], "ratio": None if ratio is None else round(ratio, 2),
                                              "timed_out": capped[v]}
                worst[v] = max(worst[v], ratio if ratio is not None else float("inf"))
    loads_seen = {load: [r["loadavg_before"] for r in results if r["load"] == load] for load in loads}
    return {"cells": cells, "worst_ratio": {v: round(w, 2) for v, w in worst.items()},
            "loadavg": {k: [min(v), max(v)] if v else None for k, v in loads_seen.items()},
            "goal": "the default ('auto') at most 1.5x the best setting in every case",
            "goal_met": worst.get("auto", float("inf")) <= 1.5}


def print_table(summary: dict, commands: list[str], variants: list[str], loads: list[str]) -> None:
    print()
    print("| load | command | " + " | ".join(variants) + " |")
    print("|---|---|" + "---|" * len(variants))
    for load in loads:
        for cmd in commands:
            cells = [summary["cells"][f"{load}/{cmd}/{v}"] for v in variants]
            text = [(f"{'>' if c['timed_out'] else ''}{c['seconds']:.1f} s ({'>' if c['timed_out'] else ''}"
                     f"{c['ratio']:.2f}x)") if c["seconds"] is not None and c["ratio"] is not None else "failed"
                    for c in cells]
            print(f"| {load} | {cmd} | " + " | ".join(text) + " |")
    print("| worst ratio | | " + " | ".join(f"{summary['worst_ratio'][v]:.2f}x" for v in variants) + " |")
    print(f"load average seen before runs: {summary['loadavg']}")
    print(f"goal ({summary['goal']}): {'met' if summary['goal_met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
