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

from us3l.core.files import atomic_write_bytes, atomic_write_text
from us3l.core.precision import Precision
from us3l.core.width import format_width

from .rows import CSV_COLUMNS


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


MARKERS: dict[str, str] = {Precision.FP32: "o", Precision.FP16: "s", Precision.INT8: "^"}
COLORS: dict[str, str] = {Precision.FP32: "tab:blue", Precision.FP16: "tab:orange", Precision.INT8: "tab:green"}


def write_plot(path: Path, rows: Sequence[dict], metric: str, chosen: dict | None, budget_ms: float | None,
               title: str | None = None) -> Path:
    """Left: accuracy (or width, without accuracies) against latency, one series per precision,
    the Pareto frontier across precisions, horizontal bars for the 95 % interval of the latency
    (else p50..p99), the chosen pair starred and the budget line labelled. Right: latency against
    width per precision and batch, with MACs on a twin axis. First batch size and power mode."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from .choice import pareto_front

    key = f"{metric}_ms"
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
    rows = [r for r in rows if r.get(key) is not None]  # stdout-fallback rows may lack a percentile
    first = sorted((r for r in rows if r["batch"] == batches[0] and r.get("power_mode") == modes[0]),
                   key=lambda r: r["width"])
    precisions = list(dict.fromkeys(r.get("precision") or "fp32" for r in first))
    has_acc = any(r.get("accuracy") is not None for r in first)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    if title:
        fig.suptitle(title, fontsize=10)

    def y_of(r: dict) -> float:
        return r["accuracy"] if has_acc else r["width"]

    for p in precisions:
        pts = [r for r in first if (r.get("precision") or "fp32") == p and (not has_acc or r.get("accuracy") is not None)]
        if not pts:
            continue
        xs, ys = [r[key] for r in pts], [y_of(r) for r in pts]
        lo = [r[key] - (r.get("ci_low_ms") if r.get("ci_low_ms") is not None else r.get("p50_ms", r[key])) for r in pts]
        hi = [(r.get("ci_high_ms") if r.get("ci_high_ms") is not None else r.get("p99_ms", r[key])) - r[key] for r in pts]
        ax1.errorbar(xs, ys, xerr=[[max(0.0, v) for v in lo], [max(0.0, v) for v in hi]], fmt=MARKERS.get(p, "o"),
                     color=COLORS.get(p), capsize=3, label=p, alpha=0.85)
        for r, y in zip(pts, ys):
            ax1.annotate(format_width(r["width"]), (r[key], y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = [first[i] for i in pareto_front(first, metric)]
    if len(front) > 1:
        ax1.plot([r[key] for r in front], [y_of(r) for r in front], "-", color="grey", lw=1, label="Pareto front")
    unknown = [r for r in first if has_acc and r.get("accuracy") is None]
    if unknown:
        ax1.text(0.01, 0.01, "accuracy unknown (not plotted): " + ", ".join(
            f"{format_width(r['width'])} {r.get('precision') or 'fp32'}" for r in unknown), transform=ax1.transAxes,
            fontsize=7, va="bottom")
    if chosen:
        cy = chosen.get("accuracy") if has_acc else chosen["width"]
        if cy is not None:
            ax1.plot([chosen["latency_ms"]], [cy], "*", ms=18, color="tab:red", zorder=5,
                     label=f"chosen: {format_width(chosen['width'])} {chosen.get('precision') or 'fp32'}")
    if budget_ms:
        ax1.axvline(budget_ms, ls="--", color="grey", label=f"budget {budget_ms:g} ms ({metric})")
    ax1.set_xlabel(f"{metric} latency (ms), batch {batches[0]}; bars: 95% CI")
    ax1.set_ylabel("accuracy" if has_acc else "width")
    ax1.set_title("accuracy vs latency" if has_acc else "width vs latency (no accuracy)", fontsize=9)
    ax1.legend(loc="lower right", fontsize=7)
    for b in batches:
        for p in precisions:
            pts = sorted((r for r in rows if r["batch"] == b and r.get("power_mode") == modes[0]
                          and (r.get("precision") or "fp32") == p), key=lambda r: r["width"])
            if pts:
                ax2.plot([r["width"] for r in pts], [r[key] for r in pts], marker=MARKERS.get(p, "o"), ls="-",
                         color=COLORS.get(p) if len(batches) == 1 else None, label=f"{p} batch {b}")
    ax2.set_xlabel("width")
    ax2.set_ylabel(f"{metric} latency (ms)")
    ax2.legend(loc="upper left", fontsize=7)
    if any(r.get("macs") for r in first):
        twin = ax2.twinx()
        fp = sorted({r["width"]: r for r in first}.values(), key=lambda r: r["width"])
        twin.plot([r["width"] for r in fp], [(r.get("macs") or 0) / 1e6 for r in fp], ":", color="tab:gray")
        twin.set_ylabel("MMACs (dotted)", color="tab:gray")
    ax2.set_title("latency and MACs vs width", fontsize=9)
    fig.tight_layout()
    return write_png(path, fig, dpi=110)


def write_png(path: Path, fig: Any, dpi: int) -> Path:
    """Render a matplotlib figure to PNG, write it atomically and close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


#: Columns given up first when the table does not fit the terminal (all stay in report.json / CSV).
_DROP_ORDER = ("cached", "aliases", "thr/s", "MMACs", "CoV", "mode", "mJ/inf", "CI ±ms", "p50 ms")


def render_table(report: dict, max_width: int | None = None) -> Any:
    """A rich ``Table`` of the results (chosen width highlighted).

    With ``max_width`` (the terminal's columns), low-priority columns are dropped until the
    table fits, so values are never cut; the caption names what was left out.
    """
    from rich.table import Table

    metric = report["config"]["metric"]
    chosen = report.get("chosen")
    table = Table(title=f"{report['device']} / {report['runner']} / {report['precision']}")
    rows = report["results"]

    def f(v: Any, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    columns: list[tuple[str, Any]] = [
        ("width", lambda r: format_width(r["width"])),
        ("prec", lambda r: str(r.get("precision") or "")),
        ("aliases", lambda r: ",".join(format_width(a) for a in r.get("aliases") or [])),
        ("MMACs", lambda r: f(r["macs"] / 1e6 if r.get("macs") else None, ".1f")),
        ("acc", lambda r: "?" if r.get("accuracy_source") == "unknown" else f(r.get("accuracy"), ".4f")),
        ("p50 ms", lambda r: f(r.get("p50_ms"), ".3f")), ("p95 ms", lambda r: f(r.get("p95_ms"), ".3f")),
        *([(f"{metric} ms", lambda r: f(r.get(f"{metric}_ms"), ".3f"))] if metric not in ("p50", "p95") else []),
        ("CI ±ms", lambda r: "" if r.get("ci_low_ms") is None else  # half-width of the budget metric's 95% CI
         f"{(r['ci_high_ms'] - r['ci_low_ms']) / 2:.2g}"),
        ("CoV", lambda r: f(r.get("cov_p99") if r.get("cov_p99") is not None else r.get("cov"), ".1%")), ("thr/s", lambda r: f(r.get("throughput"), ".1f")),
        ("batch", lambda r: str(r["batch"])), ("mJ/inf", lambda r: f(r.get("energy_mj"), ".3f")),
        ("mode", lambda r: f(r.get("power_mode"), "d")), ("cached", lambda r: "yes" if r.get("cached") else ""),
    ]
    columns = [(name, fn) for name, fn in columns if name in ("width", "batch") or any(fn(r) for r in rows)]
    dropped: list[str] = []

    def needed(cols: list[tuple[str, Any]]) -> int:  # rich's box: 1 + per column (padding 2 + rule 1)
        # whole header names: rich keeps "p50 ms" on one line when it can, and then cuts a value
        return 1 + sum(3 + max([len(name)] + [len(fn(r)) for r in rows]) for name, fn in cols)

    for name in _DROP_ORDER:
        if max_width is None or needed(columns) <= max_width:
            break
        if name != f"{metric} ms" and any(n == name for n, _ in columns):
            columns = [(n, fn) for n, fn in columns if n != name]
            dropped.append(name)
    for name, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for r in rows:
        is_chosen = chosen and r["width"] == chosen["width"] and r["batch"] == report["config"]["batches"][0] \
            and (r.get("precision") or "fp32") == (chosen.get("precision") or "fp32")
        table.add_row(*(fn(r) for _, fn in columns), style="bold green" if is_chosen else None)
    table.caption = (f"budget metric: {metric} (CI: its 95% bootstrap interval); CoV over the runs up to the p99; "
                     "acc ? = not measured on that file")
    if dropped:
        table.caption += f"; not shown at this width: {', '.join(dropped)} (in report.json and latency.csv)"
    return table
