"""The plan folder's readable views of the manifest's devices: ``fleet.csv``, ``fleet.png`` and the
terminal table.

:func:`fleet_rows` flattens each manifest entry to one row; :func:`write_fleet_csv` writes them,
:func:`write_fleet_plot` draws every device's accuracy-latency front, budget line and chosen point,
and :func:`render_fleet_table` is what ``us3l fleet plan`` prints.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from us3l.core.files import atomic_write_text
from us3l.core.width import format_width

FLEET_CSV_COLUMNS = ("device", "planned", "reason", "profile", "runner", "threads", "width", "precision",
                     "budget_ms", "percentile", "batch", "latency_ms", "p50_ms", "ci_low_ms", "ci_high_ms",
                     "accuracy", "artifact", "sha256", "width_index", "build_on_device", "runner_up_width",
                     "runner_up_precision", "runner_up_accuracy_margin", "runner_up_latency_margin_ms", "fingerprint",
                     "runtime", "runtime_version", "cpu_isa", "gpu_arch", "power_mode", "deploy_path")


def fleet_rows(entries: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per device (``fleet.csv`` and the terminal table)."""
    rows = []
    for e in entries:
        b, fp = e["budget"], e.get("fingerprint") or {}
        lat = e.get("latency_ms") or {}
        ci = (lat.get("ci95") or {}).get(b["percentile"]) or [None, None]
        ru = e.get("runner_up") or {}
        art = e.get("artifact") or {}
        rows.append({
            "device": e["device"], "planned": e["planned"], "reason": e.get("reason"), "profile": e["profile"],
            "runner": e.get("runner") or fp.get("runner"), "threads": e.get("threads", fp.get("threads")),
            "width": e.get("width"), "precision": e.get("precision"), "budget_ms": b["ms"],
            "percentile": b["percentile"], "batch": b["batch"], "latency_ms": lat.get(b["percentile"]),
            "p50_ms": lat.get("p50"), "ci_low_ms": ci[0], "ci_high_ms": ci[1],
            "accuracy": (e.get("accuracy") or {}).get("value"), "artifact": art.get("file"), "sha256": art.get("sha256"),
            "width_index": art.get("width_index"), "build_on_device": e.get("build_on_device"),
            "runner_up_width": ru.get("width"), "runner_up_precision": ru.get("precision"),
            "runner_up_accuracy_margin": ru.get("accuracy_margin"),
            "runner_up_latency_margin_ms": ru.get("latency_margin_ms"), "fingerprint": fp.get("id"),
            "runtime": fp.get("runtime"), "runtime_version": fp.get("runtime_version"), "cpu_isa": fp.get("cpu_isa"),
            "gpu_arch": fp.get("gpu_arch"), "power_mode": fp.get("power_mode"),
            "deploy_path": art.get("deploy_path"),
        })
    return rows


def write_fleet_csv(path: Path, entries: Sequence[dict]) -> Path:
    """``fleet.csv``: :data:`FLEET_CSV_COLUMNS`, one row per device."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(FLEET_CSV_COLUMNS)
    for row in fleet_rows(entries):
        writer.writerow(["" if row[c] is None else row[c] for c in FLEET_CSV_COLUMNS])
    return atomic_write_text(path, buf.getvalue())


def write_fleet_plot(path: Path, entries: Sequence[dict], rows_by_device: dict[str, list[dict]]) -> Path:
    """One panel per device: accuracy (or width, without accuracies) against the budget's latency
    statistic per precision, the Pareto front, the budget line and the chosen point (starred)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from us3l.benchmarks.choice import pareto_front
    from us3l.benchmarks.report import COLORS, MARKERS, write_png

    n = max(1, len(entries))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, e in zip(axes.flat, entries):
        metric, budget = e["budget"]["percentile"], e["budget"]["ms"]
        key = f"{metric}_ms"
        rows = [r for r in rows_by_device.get(e["device"], []) if r.get(key) is not None]
        has_acc = any(r.get("accuracy") is not None for r in rows)

        def y_of(r: dict, _acc: bool = has_acc) -> float:
            return r["accuracy"] if _acc else r["width"]

        for p in dict.fromkeys(r.get("precision") or "fp32" for r in rows):
            pts = sorted((r for r in rows if (r.get("precision") or "fp32") == p
                          and (not has_acc or r.get("accuracy") is not None)), key=lambda r: r[key])
            ax.plot([r[key] for r in pts], [y_of(r) for r in pts], MARKERS.get(p, "o"), color=COLORS.get(p),
                    label=p, alpha=0.8)
        front = [rows[i] for i in pareto_front(rows, metric)]
        if len(front) > 1:
            ax.plot([r[key] for r in front], [y_of(r) for r in front], "-", color="grey", lw=1, label="front")
        ax.axvline(budget, ls="--", color="tab:red", lw=1, label=f"budget {budget:g} ms")
        if e["planned"]:
            cy = (e["accuracy"]["value"] if has_acc else e["width"])
            if cy is not None:
                ax.plot([e["latency_ms"][metric]], [cy], "*", ms=16, color="tab:red", zorder=5,
                        label=f"chosen {format_width(e['width'])} {e['precision']}")
            title = f"{e['device']}: {format_width(e['width'])} {e['precision']}"
        else:
            title = f"{e['device']}: not planned"
            ax.text(0.02, 0.02, (e.get("reason") or "")[:80], transform=ax.transAxes, fontsize=6, va="bottom")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{metric} latency (ms), batch {e['budget']['batch']}", fontsize=8)
        ax.set_ylabel("accuracy" if has_acc else "width (no accuracy)", fontsize=8)
        ax.tick_params(labelsize=7)
        if rows or e["planned"]:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("fleet plan: accuracy-latency front, budget and chosen point per device", fontsize=10)
    fig.tight_layout()
    return write_png(path, fig, dpi=100)


def render_fleet_table(entries: Sequence[dict], max_width: int | None = None) -> Any:
    """The fleet as a rich ``Table``: per device its runtime, the chosen pair, its latency against the
    budget, accuracy, runner-up and artifact file (a device not planned says so in red; its reason is
    in the manifest, and the CLI prints it below the table).

    With ``max_width`` (the terminal's columns), the artifact, the runner-up and the runtime columns
    are given up in that order until the table fits; the caption names them (all are in fleet.csv).
    """
    from rich.table import Table

    def runner_up(e: dict) -> str:
        ru = e.get("runner_up")
        if not ru:
            return ""
        margin = (f"acc {ru['accuracy_margin']:+.3f}" if ru.get("accuracy_margin") is not None
                  else f"{ru['latency_margin_ms']:+.3f} ms")
        return f"{format_width(ru['width'])} {ru['precision']} ({margin})"

    cells: list[dict[str, str]] = []
    for row, e in zip(fleet_rows(entries), entries):
        pct = row["percentile"]
        if not row["planned"]:
            cells.append({"device": row["device"], "budget": f"{pct} <= {row['budget_ms']:g} ms",
                          "choice": "not planned"})  # the reason is long: the CLI prints it below the table
            continue
        runtime = f"{row['runtime']} {row['runtime_version'] or ''}".strip() + (f", {row['threads']}t"
                                                                                if row["threads"] else "")
        acc = row["accuracy"]
        cells.append({
            "device": row["device"], "runtime": runtime,
            "choice": f"{format_width(row['width'])} {row['precision']}",
            "latency": f"{row['latency_ms']:.3f}", "budget": f"{pct} <= {row['budget_ms']:g} ms",
            "acc": "?" if acc is None else f"{acc:.4f}", "runner-up": runner_up(e),
            "artifact": Path(row["artifact"]).name + (" (engine: build on device)" if row["build_on_device"] else ""),
        })
    order = ["device", "runtime", "budget", "choice", "latency", "acc", "runner-up", "artifact"]
    columns = [c for c in order if any(c in r for r in cells)]
    dropped: list[str] = []

    def needed(cols: list[str]) -> int:
        return 1 + sum(3 + max([len(c)] + [len(r.get(c, "")) for r in cells]) for c in cols)

    for name in ("artifact", "runner-up", "runtime"):
        if max_width is None or needed(columns) <= max_width:
            break
        if name in columns:
            columns.remove(name)
            dropped.append(name)
    table = Table(title="fleet plan")
    for c in columns:
        table.add_column(c, justify="right" if c in ("latency", "acc") else "left", no_wrap=c != "artifact")
    for r in cells:
        table.add_row(*(r.get(c, "") for c in columns), style="red" if r["choice"] == "not planned" else None)
    table.caption = "latency: the budget's percentile, ms; acc ? = not measured on that exact file (manifest: why_null)"
    if dropped:
        table.caption += f"; not shown at this width: {', '.join(dropped)} (in fleet.csv)"
    return table


__all__ = ["FLEET_CSV_COLUMNS", "fleet_rows", "render_fleet_table", "write_fleet_csv", "write_fleet_plot"]
