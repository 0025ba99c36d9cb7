"""Precision as a deployment dimension, measured (run by hand: ``python perf/precision.py``).

Three parts, each optional:

- ``--arch NAME`` (default ``us_resnet18_cifar``): width x precision -> p50/p95 on this CPU with the
  ONNX Runtime runner, every pair interleaved in ONE bench run, and the INT8-over-FP32 (and
  FP16-over-FP32) p50 speedup per width from that run. Untrained weights (latency does not depend
  on them); the INT8 gate's mean cosine to FP32 is reported as the only fidelity figure.
- ``--checkpoint CKPT`` (a trained digits SSL checkpoint): the same latency table, plus each
  artifact's own kNN accuracy on digits (``us3l eval --artifact``'s code path) and the
  (width, precision) pair chosen at ``--budgets`` (default: two budgets between the fastest and
  the slowest pair's p95).
- ``--calib`` (with ``--checkpoint``): MinMax / Entropy / Percentile INT8 calibration: calibration
  seconds and kNN accuracy per width.

- ``--task CKPT`` (a task checkpoint with a classifier, e.g. fine-tuned on Fashion-MNIST): INT8 that
  holds at every width. Per width, the classifier is exported as FP32 ONNX, as INT8 with the fixed
  recipe (every layer quantized, MinMax) and as INT8 with the per-width recipe chosen on held-out
  images (``int8_recipe="auto"``, :mod:`us3l.exporters.int8_recipe`); each file's own top-1 on the
  test split is measured (``us3l eval --artifact``'s code), and FP32 against INT8 p50 latency in
  ONNX Runtime (one intra-op thread, batch 1 and 8, interleaved rounds, same run). Goal: the
  auto recipe's INT8 top-1 within 1.0 point of FP32 at every width, and at least 1.5x FP32's
  speed at width 1.0.

Prints tables and writes every number as JSON with ``--json FILE``. Timings on a shared CPU are
noisy: compare ratios measured in the same run, never absolute times across runs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

WIDTHS = "0.25,0.5,0.75,1.0"


def bench_pairs(source: dict, widths: str, precisions: str, out: Path, duration: float, rounds: int) -> dict:
    """One interleaved bench over every (width, precision) pair; returns the report."""
    from us3l.benchmarks import BenchConfig, run_bench

    cfg = BenchConfig(**source, device="cpu", widths=widths, precision=precisions, duration_s=duration,
                      rounds=rounds, out_dir=out, plot=True, force=True)
    return run_bench(cfg).report


def latency_table(report: dict) -> list[dict]:
    rows = []
    for r in report["results"]:
        rows.append({"width": r["width"], "precision": r["precision"], "p50_ms": r["p50_ms"], "p95_ms": r["p95_ms"],
                     "p95_ci_ms": r["ci_ms"]["p95"] if r.get("ci_ms") else None, "cov": r["cov"],
                     "accuracy": r.get("accuracy"), "artifact": Path(r["artifact"]).name})
    return rows


def speedups(rows: list[dict]) -> dict[str, dict[str, float]]:
    """p50 of fp32 / p50 of the other precision, per width (same run)."""
    by = {(r["width"], r["precision"]): r for r in rows}
    out: dict[str, dict[str, float]] = {}
    for (w, p), r in sorted(by.items()):
        if p != "fp32" and (w, "fp32") in by:
            out.setdefault(p, {})[f"{w:g}"] = round(by[(w, "fp32")]["p50_ms"] / r["p50_ms"], 3)
    return out


def gate_cosines(out: Path) -> dict[str, float]:
    res = {}
    for side in sorted((out / "artifacts").glob("*_onnx_*.json")):
        if side.name.endswith(".ranges.json"):
            continue
        data = json.loads(side.read_text())
        res[data["artifact"]] = round(float(data["parity"].get("mean_cosine", float("nan"))), 5)
    return res


def artifact_accuracy(ckpt_path: Path, out: Path) -> list[dict]:
    """kNN accuracy of every artifact bench exported (ONNX Runtime, same protocol as eval)."""
    from us3l.core.checkpoint import load_checkpoint
    from us3l.trainer.evaluate import evaluate_artifact, evaluate_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    rows = []
    for onnx in sorted((out / "artifacts").glob("*.onnx")):
        row = evaluate_artifact(ckpt, onnx)
        rows.append({k: row[k] for k in ("width", "precision", "knn", "artifact")})
    torch_rows = evaluate_checkpoint(ckpt, sorted({r["width"] for r in rows}))
    for r in torch_rows:
        rows.append({"width": r["width"], "precision": "pytorch-fp32", "knn": r["knn"], "artifact": None})
    return rows


def calibration_methods(ckpt_path: Path, widths: str, root: Path) -> list[dict]:
    from us3l.core.checkpoint import load_checkpoint
    from us3l.exporters import ExportConfig, run_export
    from us3l.trainer.evaluate import evaluate_artifact

    ckpt = load_checkpoint(ckpt_path)
    rows = []
    for method in ("minmax", "entropy", "percentile"):
        t0 = time.perf_counter()
        res = run_export(ExportConfig(checkpoint=str(ckpt_path), widths=widths, precision="int8", calibration=method,
                                  out_dir=str(root / method), min_cosine=0.0))
        total = time.perf_counter() - t0
        for art in res.artifacts:
            side = json.loads(art.sidecar.read_text())
            acc = evaluate_artifact(ckpt, art.path)
            rows.append({"method": method, "width": art.width, "knn": acc["knn"],
                         "calib_seconds": side["calibration"]["seconds"], "calib_images": side["calibration"]["images"],
                         "mean_cosine": side["parity"]["mean_cosine"], "export_seconds_all_widths": round(total, 2)})
    return rows


def _p50(sess, feed: dict, iters: int) -> float:
    import statistics

    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def task_int8(ckpt_path: Path, widths: str, root: Path, gate_images: int, int8_images: int, rounds: int,
              iters: int) -> dict:
    """INT8 per width of a task checkpoint: fixed vs per-width (auto) recipe, top-1 and speed vs FP32."""
    import os
    import statistics

    import numpy as np
    import onnxruntime as ort

    from us3l.core.checkpoint import load_checkpoint
    from us3l.exporters import ExportConfig, run_export
    from us3l.trainer.evaluate import evaluate_artifact

    ckpt = load_checkpoint(ckpt_path)
    common = {"checkpoint": str(ckpt_path), "widths": widths, "outputs": "logits", "gate_images": gate_images,
              "int8_images": int8_images}
    exports, seconds = {}, {}
    for name, extra in (("fp32", {}), ("int8_fixed", {"precision": "int8", "int8_recipe": "fixed"}),
                        ("int8_auto", {"precision": "int8", "int8_recipe": "auto"})):
        t0 = time.perf_counter()
        exports[name] = run_export(ExportConfig(out_dir=str(root / name), **common, **extra))
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"exported {name} in {seconds[name]} s (load {os.getloadavg()[0]:.1f})", flush=True)
    rows = []
    for art in exports["fp32"].artifacts:
        w = art.width
        row: dict = {"width": w}
        for name, res in exports.items():
            a = res.for_width(w)
            acc = evaluate_artifact(ckpt, a.path)
            row[f"{name}_top1"] = round(100 * acc["top1"], 2)
            side = json.loads(a.sidecar.read_text())
            if name != "fp32":
                row[f"{name}_cosine"] = round(side["parity"]["mean_cosine"], 4)
                row[f"{name}_agreement"] = side["parity"].get("top1_agreement")
            if name == "int8_auto":
                recipe = side["calibration"]["recipe"]
                row["auto_recipe"] = {"calibration": recipe["chosen"]["calibration"],
                                      "keep_fp32": recipe["chosen"]["keep_fp32"], "kept_nodes": recipe["kept_fp32"],
                                      "passed": recipe["passed"], "tried": len(recipe["tried"])}
        row["fixed_minus_fp32"] = round(row["int8_fixed_top1"] - row["fp32_top1"], 2)
        row["auto_minus_fp32"] = round(row["int8_auto_top1"] - row["fp32_top1"], 2)
        rows.append(row)
    # latency: FP32 against both INT8 files per width, interleaved, one thread
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    rng = np.random.default_rng(0)
    speed = []
    for art in exports["fp32"].artifacts:
        w = art.width
        sess = {n: ort.InferenceSession(str(r.for_width(w).path), sess_options=opts, providers=["CPUExecutionProvider"])
                for n, r in exports.items()}
        shape = [d if isinstance(d, int) else 1 for d in sess["fp32"].get_inputs()[0].shape][1:]
        for batch in (1, 8):
            feed = {"input": rng.standard_normal((batch, *shape)).astype(np.float32)}
            med: dict[str, list[float]] = {n: [] for n in sess}
            for r in range(rounds):
                order = list(sess) if r % 2 == 0 else list(reversed(list(sess)))
                for n in order:
                    _p50(sess[n], feed, max(3, iters // 5))
                    med[n].append(_p50(sess[n], feed, iters))
            p50 = {n: statistics.median(v) for n, v in med.items()}
            speed.append({"width": w, "batch": batch, **{f"{n}_p50_ms": round(v, 4) for n, v in p50.items()},
                          "fixed_speedup": round(p50["fp32"] / p50["int8_fixed"], 3),
                          "auto_speedup": round(p50["fp32"] / p50["int8_auto"], 3)})
    w1 = [r for r in speed if r["width"] == max(r2["width"] for r2 in speed)]
    goals = {"auto_within_1pt_every_width": all(r["auto_minus_fp32"] >= -1.0 for r in rows),
             "worst_auto_minus_fp32": min(r["auto_minus_fp32"] for r in rows),
             "worst_fixed_minus_fp32": min(r["fixed_minus_fp32"] for r in rows),
             "auto_speedup_at_widest_batch1": next(r["auto_speedup"] for r in w1 if r["batch"] == 1),
             "auto_speedup_at_widest_batch8": next(r["auto_speedup"] for r in w1 if r["batch"] == 8)}
    goals["auto_speedup>=1.5_at_widest"] = goals["auto_speedup_at_widest_batch1"] >= 1.5
    return {"checkpoint": str(ckpt_path), "gate_images": gate_images, "int8_images": int8_images,
            "export_seconds": seconds, "accuracy": rows, "latency": speed, "goals": goals}


def choices(report: dict, budgets: list[float]) -> list[dict]:
    from us3l.benchmarks.choice import choose

    primary = [r for r in report["results"] if r["batch"] == report["config"]["batches"][0]]
    if not budgets:
        lat = sorted(r["p95_ms"] for r in primary)
        budgets = [round(lat[0] + (lat[-1] - lat[0]) * f, 2) for f in (0.25, 0.6)]
    out = []
    for b in budgets:
        c = choose(primary, b, "p95")
        ch = c["chosen"]
        out.append({"budget_ms": b, "chosen": None if ch is None else
                    {"width": ch["width"], "precision": ch["precision"], "p95_ms": round(ch["latency_ms"], 3),
                     "accuracy": ch["accuracy"]}, "reason": c["reason"]})
    return out


def _print(title: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:
        return
    def cell(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, list) and len(v) == 2:  # an interval
            return f"±{(v[1] - v[0]) / 2:.2g}"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    keys = [k for k in rows[0] if k != "artifact"]
    table = Table(title=title)
    for k in keys:
        table.add_column(k.replace("precision", "prec").replace("_ci_ms", " CI"), justify="right")
    for r in rows:
        table.add_row(*(cell(r.get(k)) for k in keys))
    Console().print(table)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="us_resnet18_cifar", help="architecture for the latency-only part ('' skips it)")
    ap.add_argument("--checkpoint", type=Path, help="trained digits checkpoint for accuracy and choices")
    ap.add_argument("--widths", default=WIDTHS)
    ap.add_argument("--precisions", default="fp32,int8,fp16")
    ap.add_argument("--duration", type=float, default=2.0, help="timed seconds per pair (split over rounds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--budgets", default="", help="budgets in ms, e.g. 1.0,2.5 (default: two between fastest and slowest)")
    ap.add_argument("--calib", action="store_true", help="compare INT8 calibration methods (needs --checkpoint)")
    ap.add_argument("--calib-only", action="store_true", help="with --checkpoint: only the calibration comparison")
    ap.add_argument("--task", type=Path, help="task checkpoint (classifier): INT8 per width, fixed vs auto recipe")
    ap.add_argument("--gate-images", type=int, default=500, help="--task: held-out images the INT8 recipe is chosen on")
    ap.add_argument("--int8-images", type=int, default=500, help="--task: INT8 calibration images")
    ap.add_argument("--iters", type=int, default=200, help="--task: timed runs per file, batch and round")
    ap.add_argument("--out", type=Path, help="keep the bench outputs here (default: a temporary directory)")
    ap.add_argument("--json", type=Path, help="write all figures as JSON")
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    result: dict = {"widths": args.widths, "precisions": args.precisions}
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        if args.arch:
            out = root / "arch"
            report = bench_pairs({"arch": args.arch}, args.widths, args.precisions, out, args.duration, args.rounds)
            rows = latency_table(report)
            result["arch"] = {"name": args.arch, "environment": report["environment"], "rows": rows,
                              "speedup_over_fp32_p50": speedups(rows), "gate_mean_cosine": gate_cosines(out)}
            _print(f"{args.arch} (untrained): latency per width x precision", rows)
            _print("p50 speedup over fp32, same run", [{"precision": p, **v} for p, v in speedups(rows).items()])
        if args.task:
            res = task_int8(args.task, args.widths, root / "task", args.gate_images, args.int8_images, args.rounds,
                            args.iters)
            result["task"] = res
            _print(f"{args.task.name}: top-1 %, FP32 vs INT8 fixed / auto",
                   [{"width": r["width"], "fp32": r["fp32_top1"], "fixed": r["int8_fixed_top1"],
                     "auto": r["int8_auto_top1"], "d_fixed": r["fixed_minus_fp32"], "d_auto": r["auto_minus_fp32"],
                     "agree_fixed": r["int8_fixed_agreement"], "agree_auto": r["int8_auto_agreement"]}
                    for r in res["accuracy"]])
            _print("per-width INT8 recipe (auto)", [{"width": r["width"], "calibration": r["auto_recipe"]["calibration"],
                                                     "fp32_kept": ",".join(r["auto_recipe"]["keep_fp32"]) or "-",
                                                     "passed": r["auto_recipe"]["passed"], "tried": r["auto_recipe"]["tried"]}
                                                    for r in res["accuracy"]])
            _print("p50 ms, FP32 vs INT8 (same run, 1 thread)",
                   [{"width": r["width"], "batch": r["batch"], "fp32": r["fp32_p50_ms"], "fixed": r["int8_fixed_p50_ms"],
                     "auto": r["int8_auto_p50_ms"], "x_fixed": r["fixed_speedup"], "x_auto": r["auto_speedup"]}
                    for r in res["latency"]])
            print(json.dumps(res["goals"]))
        if args.checkpoint and args.calib_only:
            cal = calibration_methods(args.checkpoint, args.widths, root / "calib")
            result["calibration_methods"] = cal
            _print("INT8 calibration methods", cal)
        elif args.checkpoint:
            out = root / "ckpt"
            report = bench_pairs({"checkpoint": args.checkpoint}, args.widths, args.precisions, out, args.duration,
                                 args.rounds)
            rows = latency_table(report)
            acc = artifact_accuracy(args.checkpoint, out)
            keyed = {(a["width"], a["precision"]): a["knn"] for a in acc}
            for r in rows:
                r["knn"] = keyed.get((r["width"], r["precision"]))
                r.pop("accuracy", None)
            for r in report["results"]:  # choose with the artifacts' own accuracies
                r["accuracy"] = keyed.get((r["width"], r["precision"]))
            result["checkpoint"] = {"path": str(args.checkpoint), "rows": rows, "accuracy": acc,
                                    "speedup_over_fp32_p50": speedups(rows), "gate_mean_cosine": gate_cosines(out),
                                    "choices": choices(report, budgets)}
            _print(f"{args.checkpoint.name}: latency and kNN per width x precision", rows)
            _print("p50 speedup over fp32, same run", [{"precision": p, **v} for p, v in speedups(rows).items()])
            _print("pytorch fp32 kNN (reference)", [a for a in acc if a["precision"] == "pytorch-fp32"])
            _print("chosen pair per budget (p95)", [{"budget_ms": c["budget_ms"], **(c["chosen"] or {})}
                                                    for c in result["checkpoint"]["choices"]])
            if args.calib:
                cal = calibration_methods(args.checkpoint, args.widths, root / "calib")
                result["calibration_methods"] = cal
                _print("INT8 calibration methods", cal)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
