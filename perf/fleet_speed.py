"""Fleet planning speed: a cold plan against a cached re-plan, in ONE run (run by hand; not part of the tests).

The fleet: an untrained architecture (default ``us_resnet_mini``) at 16 widths (``0.25:1.0:0.05``)
and two precisions (fp32, int8), on three devices: this machine's CPU at 1, 2 and 3 intra-op
threads (three profiles with separate lookup-table points; no other device is reachable here).

(a) ``cold``: ``us3l fleet plan`` into an empty plan folder: every artifact exported once (shared
    by the three devices), every (device, width, precision) point measured.
(b) ``cached``: the same command again with other budgets (a re-plan): served from the plan's
    lookup table, nothing exported or measured. Goal: cached <= 5 s, reported beside the
    cold / cached ratio.

Each plan runs as the command a user types (``python -m us3l.cli.main fleet plan``), in a fresh
process, so both include the start-up of the CLI. The noise check near the budget (``remeasure``)
is off, so that the cached plan measures nothing whatever the machine's load; the load average
is recorded beside the figures.

Usage::

    python perf/fleet_speed.py --json fleet_speed.json [--arch us_resnet_mini] [--duration 0.2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WIDTHS = "0.25:1.0:0.05"
THREADS = (1, 2, 3)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _fleet(arch: str, duration: float, budgets: tuple[float, ...]) -> str:
    lines = [f'arch = "{arch}"', f'widths = "{WIDTHS}"', "", "[timing]", f"duration_s = {duration}", "rounds = 2",
             "warmup_ms = 20", "remeasure = 0", ""]
    for threads, budget in zip(THREADS, budgets):
        lines += [f"[devices.cpu-{threads}t]", 'device = "cpu"', f"threads = {threads}", f"budget_ms = {budget}",
                  'precisions = ["fp32", "int8"]', ""]
    return "\n".join(lines)


def _plan(fleet: Path, out: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "us3l.cli.main", "fleet", "plan", str(fleet), "-o", str(out),
                           "--no-plot"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    return time.perf_counter() - start, done.returncode, done.stdout + done.stderr[-2000:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet_speed.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--arch", default="us_resnet_mini", help="untrained architecture (default us_resnet_mini)")
    parser.add_argument("--duration", type=float, default=0.2, help="timed seconds per point (default 0.2)")
    parser.add_argument("--keep", type=Path, help="plan folder to keep (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fleet-speed-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        fleet = root / "fleet.toml"
        fleet.write_text(_fleet(args.arch, args.duration, (1000.0, 1000.0, 1000.0)))
        load_before = _load()
        cold, rc_cold, out_cold = _plan(fleet, root / "plan")
        fleet.write_text(_fleet(args.arch, args.duration, (0.5, 0.3, 2.0)))  # a re-plan: other budgets
        cached, rc_cached, out_cached = _plan(fleet, root / "plan")
        load_after = _load()
        manifest = json.loads((root / "plan" / "manifest.json").read_text())
        reports = [json.loads(p.read_text()) for p in sorted((root / "plan" / "bench" / "devices").glob("*/report.json"))]
        points = sum(len(r["results"]) for r in reports)
        fresh = sum(not row["cached"] for r in reports for row in r["results"])
        figures = {
            "arch": args.arch, "widths": WIDTHS, "precisions": ["fp32", "int8"], "devices": len(THREADS),
            "threads": list(THREADS), "duration_s": args.duration, "points": points,
            "cold_s": round(cold, 2), "cached_s": round(cached, 2), "cold_over_cached": round(cold / cached, 1),
            "cached_goal_s": 5.0, "cached_goal_met": cached <= 5.0, "cached_points_measured_again": fresh,
            "exit_codes": [rc_cold, rc_cached], "load_before": load_before, "load_after": load_after,
            "cpu_count": os.cpu_count(),
            "chosen": {d["device"]: [d.get("width"), d.get("precision")] for d in manifest["devices"]},
        }
    print(out_cached.strip())
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if rc_cold == rc_cached == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
