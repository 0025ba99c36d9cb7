"""Export speed, and the switchable file against per-width files (run by hand; not part of the tests).

Everything is measured in ONE run, on the 16-width ladder ``0.25:1.0:0.05`` of ``us_resnet18_cifar``
(untrained; 16 distinct networks), each export cold (a fresh output folder, in a fresh process, so
no variant profits from another's warm-up of torch's exporter):

(a) ``ladder``: the ladder with the default exporter (dynamo) and the default method,
    substitution (one width translated, 15 derived; :mod:`us3l.exporters.ladder`); the same
    command again (served from cache).
    ``per_width_dynamo``: every width translated by dynamo (``substitute=False``: what the default
    was before substitution). ``legacy``: every width translated by the legacy TorchScript exporter.
    Goal: substitution >= 5x faster cold than per-width dynamo.
(b) ``switchable``: ``export --switchable`` of the same ladder: file size against the widest
    per-width file (goal <= 1.02x) and against the sum of all 16; ONNX Runtime p50 at every width,
    batch 1 and 8, against the per-width file of that width, measured in interleaved rounds with
    one intra-op thread, as wall time and as the calling thread's CPU time per run (ONNX Runtime
    runs on that thread with one intra-op thread, so the second is the work of one inference and
    is not stretched when other processes take the core; goal: within 5 % at every width and
    batch); session creation time (wall and CPU) and peak RSS (``VmHWM``) of a process that loads
    the switchable file against one that loads the widest per-width file and one that loads all
    16 (each in a fresh process).
(c) ``--latency-check`` (optional): ORT latency of a sliced width against a hand-built static
    ResNet-18 with the same channels and weights (should be 1.00 +- 0.03).

Usage::

    python perf/export_speed.py --json export_speed.json [--threads 1] [--rounds 5]

Timings on a shared machine are noisy: the goals are ratios measured in this one run; the load
average is recorded beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LADDER = "0.25:1.0:0.05"
ARCH = "us_resnet18_cifar"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _child_export(args: argparse.Namespace) -> None:
    """Child process: one cold export of the ladder, timed; prints JSON."""
    import torch

    torch.set_num_threads(args.threads)
    from us3l.exporters import ExportConfig, run_export

    cfg = ExportConfig(arch=args.arch, widths=args.ladder, out_dir=args.out, onnx_exporter=args.exporter,
                       substitute=args.substitute, switchable=args.switchable, threads=args.threads)
    t = time.perf_counter()
    res = run_export(cfg)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    again = run_export(cfg)
    cached = time.perf_counter() - t
    methods: dict[str, int] = {}
    fallbacks = []
    for a in res.artifacts:
        side = json.loads(a.sidecar.read_text())
        m = (side.get("export") or {}).get("method", "?")
        methods[m] = methods.get(m, 0) + 1
        if (side.get("export") or {}).get("fallback"):
            fallbacks.append([a.width, side["export"]["fallback"]])
    print(json.dumps({"cold_s": round(cold, 2), "cached_s": round(cached, 2), "artifacts": len(res.artifacts),
                      "cached_artifacts": again.num_cached, "methods": methods, "fallbacks": fallbacks,
                      "max_abs_err": max(a.parity["max_abs_err"] for a in res.artifacts),
                      "load_after": _load()}))


def _status_mib(key: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` of this process in MiB, from /proc (reset by exec, unlike
    ``ru_maxrss``, which a child inherits from the process that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _child_session(args: argparse.Namespace) -> None:
    """Child process: create ORT sessions for the given files, run once each; print time and peak RSS."""
    import onnxruntime as ort

    files = args.files.split(",")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    rss0 = _status_mib("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    sessions = [ort.InferenceSession(f, sess_options=opts, providers=["CPUExecutionProvider"]) for f in files]
    created, created_cpu = time.perf_counter() - t, time.process_time() - c
    for s in sessions:
        shape = [d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape]
        feed = {"input": np.zeros(shape, np.float32)}
        if any(i.name == "width_index" for i in s.get_inputs()):
            feed["width_index"] = np.asarray(args.index, np.int64)
        s.run(None, feed)
    print(json.dumps({"session_s": round(created, 4), "session_cpu_s": round(created_cpu, 4),
                      "peak_rss_mib": _status_mib("VmHWM"), "rss_before_sessions_mib": rss0,
                      "rss_after_mib": _status_mib("VmRSS")}))


def _run_child(argv: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"child {argv[:2]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ladder(root: Path, threads: int, extra: list[str]) -> dict:
    out = {}
    for name, exporter, substitute in (("ladder", "dynamo", True), ("per_width_dynamo", "dynamo", False),
                                       ("legacy", "torchscript", False)):
        d = root / name
        out[name] = {"exporter": exporter, "substitute": substitute, "load_before": _load(),
                     **_run_child(["--child-export", "--out", str(d), "--exporter", exporter, "--threads", str(threads),
                                   *extra, *(["--substitute"] if substitute else [])])}
        print(f"{name}: {out[name]['cold_s']} s cold", flush=True)
    out["speedup_vs_per_width_dynamo"] = round(out["per_width_dynamo"]["cold_s"] / out["ladder"]["cold_s"], 2)
    out["speedup_vs_legacy"] = round(out["legacy"]["cold_s"] / out["ladder"]["cold_s"], 2)
    return out


def _median_ms(sess, feed: dict, iters: int) -> float:
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _medians_ms(sess, feed: dict, iters: int) -> tuple[float, float]:
    """(wall p50, CPU p50) in ms. With one intra-op thread ONNX Runtime runs on the calling thread, so
    this thread's CPU time is the work of one inference, unlike wall time not stretched when other
    processes take the core: the comparison that survives a shared machine."""
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.thread_time()
        sess.run(None, feed)
        cpu.append((time.thread_time() - c) * 1e3)
        wall.append((time.perf_counter() - t) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def switchable(root: Path, per_dir: Path, threads: int, rounds: int, iters: int, warmup: int, extra: list[str]) -> dict:
    import onnxruntime as ort

    d = root / "switchable"
    exp = {"load_before": _load(), **_run_child(["--child-export", "--out", str(d), "--exporter", "dynamo", "--threads",
                                                 str(threads), *extra, "--substitute", "--switchable"])}
    sw_path = next(d.glob("*_switchable.onnx"))
    side = json.loads(sw_path.with_suffix(".json").read_text())
    table = side["switchable"]["index"]
    per = {}
    for row in table:
        per[row["width"]] = next(p for p in per_dir.glob("*.json") if not p.name.startswith(".")
                                 and json.loads(p.read_text()).get("width") == row["width"])
    per_files = {w: s.with_suffix(".onnx") for w, s in per.items()}
    sizes = {w: f.stat().st_size for w, f in per_files.items()}
    widest = max(sizes)
    size = {"switchable_bytes": sw_path.stat().st_size, "widest_per_width_bytes": sizes[widest],
            "sum_per_width_bytes": sum(sizes.values()),
            "over_widest": round(sw_path.stat().st_size / sizes[widest], 4),
            "over_sum": round(sw_path.stat().st_size / sum(sizes.values()), 4)}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sw = ort.InferenceSession(str(sw_path), sess_options=opts, providers=["CPUExecutionProvider"])
    sessions = {w: ort.InferenceSession(str(f), sess_options=opts, providers=["CPUExecutionProvider"])
                for w, f in per_files.items()}
    rng = np.random.default_rng(0)
    latency = []
    chw = side["input"]["shape"][1:]
    for batch in (1, 8):
        x = rng.standard_normal((batch, *chw)).astype(np.float32)
        ratios: dict[float, list[float]] = {r["width"]: [] for r in table}
        cpu_ratios: dict[float, list[float]] = {r["width"]: [] for r in table}
        p50: dict[float, dict[str, list[float]]] = {r["width"]: {"switchable": [], "per_width": []} for r in table}
        cpu50: dict[float, dict[str, list[float]]] = {r["width"]: {"switchable": [], "per_width": []} for r in table}
        for r_i in range(rounds):  # interleaved: every width, both files, each round, alternating first
            for row in table:
                w, idx = row["width"], np.asarray(row["index"], np.int64)
                pairs = [("switchable", sw, {"input": x, "width_index": idx}), ("per_width", sessions[w], {"input": x})]
                if r_i % 2:
                    pairs.reverse()
                got, got_cpu = {}, {}
                for name, sess, feed in pairs:
                    _median_ms(sess, feed, warmup)
                    got[name], got_cpu[name] = _medians_ms(sess, feed, iters)
                    p50[w][name].append(got[name])
                    cpu50[w][name].append(got_cpu[name])
                ratios[w].append(got["switchable"] / got["per_width"])
                cpu_ratios[w].append(got_cpu["switchable"] / got_cpu["per_width"])
        for row in table:
            w = row["width"]
            latency.append({"width": w, "batch": batch, "index": row["index"],
                            "switchable_p50_ms": round(statistics.median(p50[w]["switchable"]), 4),
                            "per_width_p50_ms": round(statistics.median(p50[w]["per_width"]), 4),
                            "ratio": round(statistics.median(ratios[w]), 4),
                            "round_ratios": [round(v, 3) for v in ratios[w]],
                            "switchable_cpu_p50_ms": round(statistics.median(cpu50[w]["switchable"]), 4),
                            "per_width_cpu_p50_ms": round(statistics.median(cpu50[w]["per_width"]), 4),
                            "cpu_ratio": round(statistics.median(cpu_ratios[w]), 4),
                            "cpu_round_ratios": [round(v, 3) for v in cpu_ratios[w]]})
        print(f"switchable latency batch {batch}: wall ratios " +
              " ".join(f"{r['ratio']:.3f}" for r in latency if r["batch"] == batch) + "; CPU ratios " +
              " ".join(f"{r['cpu_ratio']:.3f}" for r in latency if r["batch"] == batch), flush=True)
    del sw, sessions
    widest_idx = next(r["index"] for r in table if r["width"] == widest)
    mem = {"switchable": _run_child(["--child-session", "--files", str(sw_path), "--index", str(widest_idx),
                                     "--threads", str(threads)]),
           "widest_per_width": _run_child(["--child-session", "--files", str(per_files[widest]), "--threads", str(threads)]),
           "all_per_width": _run_child(["--child-session", "--files", ",".join(str(f) for f in per_files.values()),
                                        "--threads", str(threads)])}
    worst = max(abs(r["ratio"] - 1) for r in latency)
    worst_cpu = max(abs(r["cpu_ratio"] - 1) for r in latency)
    return {"export": exp, "size": size, "latency": latency, "sessions": mem,
            "goals": {"size_over_widest<=1.02": size["over_widest"] <= 1.02,
                      "p50_within_5pct_every_width_batch_1_and_8": worst <= 0.05, "worst_p50_deviation": round(worst, 4),
                      "cpu_p50_within_5pct_every_width_batch_1_and_8": worst_cpu <= 0.05,
                      "worst_cpu_p50_deviation": round(worst_cpu, 4),
                      "parity_every_index": bool(side["parity"]["passed"])},
            "parity_max_abs_err": side["parity"]["max_abs_err"]}


def latency_check(width: float, threads: int, rounds: int, iters: int, warmup: int) -> dict:
    """ORT p50 of a sliced width against a hand-built static ResNet-18 of the same channels and weights."""
    import torch
    from torch import nn

    from us3l.core.bn import calibrate_bn
    from us3l.core.models import get_model
    from us3l.core.slicing import slice_to_width
    from us3l.exporters.onnx_exporter import ort_session, simplify_onnx, torch_to_onnx_bytes

    class Block(nn.Module):
        def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(mid)
            self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            idt = x if self.downsample is None else self.downsample(x)
            return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + idt)

    class Hand(nn.Module):
        def __init__(self, ch: dict[str, int]) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, ch["conv1"], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(ch["conv1"])
            cin = ch["conv1"]
            for s in range(1, 5):
                blocks = []
                for b in range(2):
                    blocks.append(Block(cin, ch[f"layer{s}.{b}.conv1"], ch[f"layer{s}.{b}.conv2"], 2 if (s > 1 and b == 0) else 1))
                    cin = ch[f"layer{s}.{b}.conv2"]
                setattr(self, f"layer{s}", nn.Sequential(*blocks))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    import onnx

    torch.manual_seed(0)
    net = get_model(ARCH).eval()
    calibrate_bn(net, [torch.randn(32, 3, 32, 32)], width)
    static = slice_to_width(net.eval(), width)
    hand = Hand(static.channels).eval()
    hand.load_state_dict(dict(static.state_dict()), strict=True)
    sessions = {name: ort_session(simplify_onnx(onnx.load_from_string(torch_to_onnx_bytes(
        m, torch.zeros(2, 3, 32, 32), 17, True))).SerializeToString(), threads=threads)
        for name, m in (("sliced", static), ("hand_built", hand))}
    feed = {"input": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    med: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            _median_ms(sess, feed, warmup)
            med[name].append(_median_ms(sess, feed, iters))
    return {"width": width, "sliced_ms": round(statistics.median(med["sliced"]), 4),
            "hand_built_ms": round(statistics.median(med["hand_built"]), 4),
            "ratio": round(statistics.median(med["sliced"]) / statistics.median(med["hand_built"]), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="export_speed.json", help="where to write the results")
    ap.add_argument("--threads", type=int, default=1, help="torch threads while exporting and ORT intra-op threads")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    ap.add_argument("--iters", type=int, default=100, help="timed runs per width, file, batch and round")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--latency-check", type=float, default=None, metavar="WIDTH",
                    help="also compare a sliced width with a hand-built static ResNet-18 (part c)")
    ap.add_argument("--keep", type=Path, help="keep the exported files here (default: a temporary folder)")
    ap.add_argument("--arch", default=ARCH, help="architecture (the goals are stated for us_resnet18_cifar)")
    ap.add_argument("--ladder", default=LADDER, help="widths (the goals are stated for 0.25:1.0:0.05)")
    ap.add_argument("--child-export", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-session", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--exporter", default="dynamo", help=argparse.SUPPRESS)
    ap.add_argument("--substitute", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--switchable", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_export:
        return _child_export(args)
    if args.child_session:
        return _child_session(args)
    os.environ.pop("US3L_ONNX_EXPORTER", None)  # the product default (dynamo) unless a variant names one
    root = Path(tempfile.mkdtemp(prefix="us3l-export-speed-")) if args.keep is None else args.keep
    started, load_start = time.perf_counter(), _load()
    extra = ["--arch", args.arch, "--ladder", args.ladder]
    try:
        res_ladder = ladder(root, args.threads, extra)
        res_switch = switchable(root, root / "per_width_dynamo", args.threads, args.rounds, args.iters, args.warmup, extra)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    result = {"arch": args.arch, "widths": args.ladder, "threads": args.threads, "load_at_start": load_start, "load_at_end": _load(),
              "cores": os.cpu_count(), "wall_s": round(time.perf_counter() - started, 1),
              "ladder": res_ladder, "switchable": res_switch,
              "goals": {"substitution>=5x_per_width_dynamo": res_ladder["speedup_vs_per_width_dynamo"] >= 5,
                        **res_switch["goals"]}}
    if args.latency_check is not None:
        result["latency_check"] = latency_check(args.latency_check, args.threads, args.rounds, args.iters, args.warmup)
    import onnxruntime
    import torch

    result["versions"] = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"export speed and switchable file ({args.arch}, {args.ladder}, load {load_start} -> {result['load_at_end']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name in ("ladder", "per_width_dynamo", "legacy"):
        r = res_ladder[name]
        table.add_row(f"{name}: {r['artifacts']} artifacts cold ({r['methods']})", f"{r['cold_s']:.1f} s")
    table.add_row("substitution speed-up vs per-width dynamo", f"{res_ladder['speedup_vs_per_width_dynamo']:.2f}x")
    table.add_row("substitution speed-up vs legacy", f"{res_ladder['speedup_vs_legacy']:.2f}x")
    s = res_switch["size"]
    table.add_row("switchable size / widest per-width file", f"{s['over_widest']:.4f}")
    table.add_row("switchable size / sum of the per-width files", f"{s['over_sum']:.4f}")
    table.add_row("worst |p50 switchable / per-width - 1|, wall (b1, b8)", f"{res_switch['goals']['worst_p50_deviation']:.4f}")
    table.add_row("worst |p50 switchable / per-width - 1|, thread CPU", f"{res_switch['goals']['worst_cpu_p50_deviation']:.4f}")
    m = res_switch["sessions"]
    for k in ("switchable", "widest_per_width", "all_per_width"):
        table.add_row(f"session {k}: create (wall, CPU) / peak RSS",
                      f"{m[k]['session_s'] * 1e3:.0f}, {m[k]['session_cpu_s'] * 1e3:.0f} ms / {m[k]['peak_rss_mib']:.0f} MiB")
    Console().print(table)


if __name__ == "__main__":
    main()
