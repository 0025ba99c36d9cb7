"""Reports: ``report.json``, ``latency.csv``, the trade-off PNG and the on-screen rich table.

All files are written atomically; matplotlib (Agg) and rich are imported lazily.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from us3l.core.width import format_width

from us3l.core.files import atomic_write_bytes, atomic_write_text

CSV_COLUMNS = ("width", "aliases", "channels", "macs", "params", "accuracy", "p50_ms", "p90_ms", "p95_ms", "p99_ms",
               "mean_ms", "std_ms", "min_ms", "max_ms", "cov", "n", "throughput", "batch", "runner", "device",
               "precision", "threads", "power_mode", "power_mw", "energy_mj", "gpu_compute_p50_ms", "source",
               "cached", "sha256")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def write_csv(path: Path, rows: Sequence[dict]) -> Path:
    """``latency.csv`` with :data:`CSV_COLUMNS` (lists and dicts as compact JSON)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
    return atomic_write_text(path, buf.getvalue())


def write_json(path: Path, report: dict) -> Path:
    """``report.json`` (indented, stable key order)."""
    return atomic_write_text(path, json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")


def write_plot(path: Path, rows: Sequence[dict], metric: str, chosen: dict | None, budget_ms: float | None) -> Path:
    """Accuracy-vs-latency (chosen point marked; width-vs-latency without accuracies) and
    latency-vs-width with MACs on a twin axis, for the first batch size (all batches on the right)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    key = f"{metric}_ms"
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
    rows = [r for r in rows if r.get(key) is not None]  # stdout-fallback rows may lack a percentile
    first = sorted((r for r in rows if r["batch"] == batches[0] and r.get("power_mode") == modes[0]),
                   key=lambda r: r["width"])
    has_acc = any(r.get("accuracy") is not None for r in first)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    shown = [r for r in first if r.get("accuracy") is not None] if has_acc else first  # widths never evaluated: right panel only
    ys = [r["accuracy"] if has_acc else r["width"] for r in shown]
    ax1.plot([r[key] for r in shown], ys, "o-", color="tab:blue")
    for r, y in zip(shown, ys):
        ax1.annotate(format_width(r["width"]), (r[key], y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if chosen:
        cy = chosen.get("accuracy") if has_acc else chosen["width"]
        if cy is not None:
            ax1.plot([chosen["latency_ms"]], [cy], "*", ms=16, color="tab:red", label="chosen")
            ax1.legend(loc="lower right")
    if budget_ms:
        ax1.axvline(budget_ms, ls="--", color="grey")
    ax1.set_xlabel(f"{metric} latency (ms), batch {batches[0]}")
    ax1.set_ylabel("accuracy" if has_acc else "width")
    ax1.set_title("accuracy vs latency" if has_acc else "width vs latency")
    for b in batches:
        pts = sorted((r for r in rows if r["batch"] == b and r.get("power_mode") == modes[0]), key=lambda r: r["width"])
        ax2.plot([r["width"] for r in pts], [r[key] for r in pts], "o-", label=f"batch {b}")
    ax2.set_xlabel("width")
    ax2.set_ylabel(f"{metric} latency (ms)")
    ax2.legend(loc="upper left")
    if any(r.get("macs") for r in first):
        twin = ax2.twinx()
        twin.plot([r["width"] for r in first], [(r.get("macs") or 0) / 1e6 for r in first], "s:", color="tab:gray")
        twin.set_ylabel("MMACs (dotted)", color="tab:gray")
    ax2.set_title("latency and MACs vs width")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def render_table(report: dict) -> Any:
    """A rich ``Table`` of the results (chosen width highlighted)."""
    from rich.table import Table

    metric = report["config"]["metric"]
    chosen = report.get("chosen")
    table = Table(title=f"{report['device']} / {report['runner']} / {report['precision']}")
    rows = report["results"]

    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    columns: list[tuple[str, Any]] = [
        ("width", lambda r: format_width(r["width"])),
        ("aliases", lambda r: ",".join(format_width(a) for a in r.get("aliases") or [])),
        ("MMACs", lambda r: f(r["macs"] / 1e6 if r.get("macs") else None, ".1f")),
        ("acc", lambda r: f(r.get("accuracy"), ".4f")),
        ("p50 ms", lambda r: f(r.get("p50_ms"), ".3f")), ("p95 ms", lambda r: f(r.get("p95_ms"), ".3f")),
        ("p99 ms", lambda r: f(r.get("p99_ms"), ".3f")), ("mean ms", lambda r: f(r.get("mean_ms"), ".3f")),
        ("CoV", lambda r: f(r.get("cov"), ".1%")), ("thr/s", lambda r: f(r.get("throughput"), ".1f")),
        ("batch", lambda r: str(r["batch"])), ("mJ/inf", lambda r: f(r.get("energy_mj"), ".3f")),
        ("mode", lambda r: f(r.get("power_mode"), "d")), ("cached", lambda r: "yes" if r.get("cached") else ""),
    ]
    columns = [(name, fn) for name, fn in columns if name in ("width", "batch") or any(fn(r) for r in rows)]
    for name, _ in columns:
        table.add_column(name, justify="right")
    for r in rows:
        is_chosen = chosen and r["width"] == chosen["width"] and r["batch"] == report["config"]["batches"][0]
        table.add_row(*(fn(r) for _, fn in columns), style="bold green" if is_chosen else None)
    table.caption = f"budget metric: {metric}"
    return table
