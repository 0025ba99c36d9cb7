"""Precision as a deployment dimension, measured (run by hand: ``python -m perf.precision``).

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
