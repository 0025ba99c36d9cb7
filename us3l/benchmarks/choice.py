"""Choosing the (width, precision) pair: accuracy join, Pareto front, budget choice, bisection.

All pure functions over report rows (dicts with ``width``, ``<metric>_ms`` and optional
``accuracy``), so they are tested without measuring anything.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from pathlib import Path

from us3l.core.accuracy import read_accuracy, row_precision
from us3l.core.errors import ConfigError, DataError
from us3l.core.precision import PLANS
from us3l.core.width import DEFAULT_DIVISOR, format_width, round_width

from .stats import METRICS

ACCURACY_KEYS = ("linear", "knn", "accuracy", "top1")


def load_accuracy(path: Path) -> dict[tuple[float, str], dict]:
    """Read ``accuracy.json`` from ``us3l eval``: ``{"checkpoint", "protocol", "results": [...]}`` or a bare list.

    Returns:
        ``{(width, precision): {"accuracy": value, "metric": "linear"|"knn"|..., **raw}}`` (linear
        preferred over k-NN; rows without ``precision`` are ``fp32``).

    Raises:
        DataError: unreadable, not JSON, or rows without ``width`` and an accuracy value.
    """
    return accuracy_table(read_accuracy(path), path)


def accuracy_table(rows: Sequence[dict], path: Path) -> dict[tuple[float, str], dict]:
    """:func:`load_accuracy` of rows already read from ``path`` (named in errors)."""
    table: dict[tuple[float, str], dict] = {}
    for i, row in enumerate(rows):
        metric = next((k for k in ACCURACY_KEYS if isinstance(row.get(k), (int, float))), None)
        if metric is None:
            raise DataError(f"accuracy table {path}: row {i} has none of {', '.join(ACCURACY_KEYS)}")
        table[(round_width(row["width"]), row_precision(row))] = {**row, "accuracy": float(row[metric]), "metric": metric}
    return table


def accuracy_mismatch(data: dict, path: Path, checkpoint_hash: str | None, divisor: int) -> str | None:
    """Why the accuracy table ``data`` (read from ``path``) does not describe the benchmarked
    networks, or ``None``.

    Two cases are refused: a table measured on another checkpoint (its recorded content hash
    differs: accuracies from before a retrain), and a table of the method's divisor-8 networks
    joined to snapped (``--snap 16|32``) networks, which have other channel counts.
    """
    recorded = data.get("checkpoint")
    if checkpoint_hash and recorded and recorded != checkpoint_hash:
        return (f"accuracy table {path} was measured on another checkpoint (hash {str(recorded)[:12]}, this one "
                f"{checkpoint_hash[:12]}); its accuracies are not joined: rerun 'us3l eval' on this checkpoint")
    measured = int((data.get("protocol") or {}).get("divisor", DEFAULT_DIVISOR))
    if measured != divisor:
        return (f"accuracy table {path} describes divisor-{measured} networks, not the --snap {divisor} ones measured "
                f"here (other channel counts); its accuracies are not joined")
    return None


def accuracy_for(width: float, aliases: Sequence[float], table: dict[tuple[float, str], dict],
                 precision: str = "fp32") -> dict | None:
    """Accuracy entry of ``width`` (or of one of its aliases: same network) at ``precision``.

    Never another precision's number: an INT8 artifact without its own row has no accuracy.
    """
    for w in (width, *aliases):
        if (round_width(w), precision) in table:
            return table[(round_width(w), precision)]
    return None


PRECISION_ORDER = {p.value: plan.rank for p, plan in PLANS.items()}  # most faithful first (ties without accuracy)


def pair(row: dict) -> dict:
    """``{"width", "precision"}`` of a row."""
    return {"width": row["width"], "precision": row.get("precision") or "fp32"}


def pareto_front(rows: Sequence[dict], metric: str = "p50") -> list[int]:
    """Indices of rows not dominated in (lower latency, higher accuracy), over every precision.

    When some rows have a measured accuracy, only those can be on the front (an unknown accuracy
    is not comparable). With no accuracy at all, quality falls back to width (wider = better; at
    equal width the more faithful precision), so the front is still meaningful for planning.
    """
    key = f"{metric}_ms"
    rated = any(r.get("accuracy") is not None for r in rows)

    def quality(r: dict) -> tuple[float, float]:
        if rated:
            return (r["accuracy"], 0.0)
        return (r["width"], -PRECISION_ORDER.get(r.get("precision") or "fp32", 9))

    front = []
    for i, a in enumerate(rows):
        if a.get(key) is None or (rated and a.get("accuracy") is None):
            continue
        dominated = any(
            b[key] <= a[key] and quality(b) >= quality(a) and (b[key] < a[key] or quality(b) > quality(a))
            for j, b in enumerate(rows) if j != i and b.get(key) is not None and not (rated and b.get("accuracy") is None))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: rows[i][key])


def _summary(row: dict, key: str) -> dict:
    out = {**pair(row), "latency_ms": row[key], "accuracy": row.get("accuracy"), "aliases": row.get("aliases", []),
           "artifact": row.get("artifact")}
    if row.get("ci_ms"):
        out["ci_ms"] = row["ci_ms"]
    return out


def choose(rows: Sequence[dict], budget_ms: float, metric: str = "p95") -> dict:
    """Pick the (width, precision) pair for a latency budget.

    The most accurate pair with ``<metric> <= budget`` (ties: faster). Pairs without a measured
    accuracy are not ranked against measured ones (listed in ``unrated``); with no accuracy at all,
    the widest width within budget (ties: the more faithful precision). If none fits, ``chosen`` is
    ``None`` and ``reason`` names the fastest pair and its latency. ``next`` is the candidate that
    would win with a little more budget (the fastest pair better than the chosen one), for the
    noise check.

    Returns:
        ``{"chosen": summary-or-None, "next": summary-or-None, "unrated": [pairs], "budget_ms",
        "metric", "reason", "fastest": {"width", "precision", "latency_ms"}}``.

    Raises:
        ConfigError: bad metric, non-positive budget or no rows.
    """
    if metric not in METRICS:
        raise ConfigError(f"metric {metric!r} is invalid; valid: {', '.join(METRICS)}")
    if not budget_ms or budget_ms <= 0:
        raise ConfigError(f"budget must be > 0 ms, got {budget_ms}")
    if not rows:
        raise ConfigError("no measured widths to choose from")
    key = f"{metric}_ms"
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        raise ConfigError(f"no measured width has a {metric} latency (trtexec's stdout fallback may lack it); "
                          "choose another --metric")
    fastest = min(rows, key=lambda r: r[key])
    multi = len({r.get("precision") or "fp32" for r in rows}) > 1
    name = (lambda r: f"width {format_width(r['width'])} {r.get('precision') or 'fp32'}") if multi else \
        (lambda r: f"width {format_width(r['width'])}")
    out = {"budget_ms": budget_ms, "metric": metric, "next": None, "unrated": [],
           "fastest": {**pair(fastest), "latency_ms": fastest[key]}}
    fits = [r for r in rows if r[key] <= budget_ms]
    if not fits:
        return {**out, "chosen": None,
                "reason": f"no width meets {metric} <= {budget_ms:g} ms; the fastest is "
                          f"{name(fastest)} at {fastest[key]:.3f} ms"}
    rated = [r for r in fits if r.get("accuracy") is not None]
    any_rated = any(r.get("accuracy") is not None for r in rows)
    if rated:
        best = max(rated, key=lambda r: (r["accuracy"], -r[key]))
        why = f"most accurate {'pair' if multi else 'width'} within {metric} <= {budget_ms:g} ms ({best['accuracy']:.4g} accuracy)"
        better = [r for r in rows if r.get("accuracy") is not None and r["accuracy"] > best["accuracy"]]
        unrated = [pair(r) for r in fits if r.get("accuracy") is None]
        if unrated:
            why += f"; {len(unrated)} pair(s) within budget have no measured accuracy and were not ranked"
    else:
        best = max(fits, key=lambda r: (r["width"], -PRECISION_ORDER.get(r.get("precision") or "fp32", 9), -r[key]))
        why = f"widest width within {metric} <= {budget_ms:g} ms (" + \
            ("no accuracy measured for these pairs" if any_rated else "no accuracy table") + ")"
        better = [r for r in rows if r["width"] > best["width"]]
        unrated = [pair(r) for r in fits] if multi else []
    nxt = min(better, key=lambda r: r[key]) if better else None
    return {**out, "chosen": _summary(best, key), "next": _summary(nxt, key) if nxt else None, "unrated": unrated,
            "reason": why}


def distinct_configs(widths: Sequence[float], config_of: Callable[[float], Hashable]) -> list[tuple[float, float]]:
    """Group ascending ``widths`` into runs with the same channel configuration.

    The width -> channels map is a step function, so bisection runs over these groups.

    Returns:
        ``[(lowest width, highest width)]`` per distinct configuration, ascending.
    """
    groups: list[list[float]] = []
    last = object()
    for w in sorted(round_width(x) for x in widths):
        cfg = config_of(w)
        if groups and cfg == last:
            groups[-1][1] = w
        else:
            groups.append([w, w])
        last = cfg
    return [(lo, hi) for lo, hi in groups]


def bisect_widest(n: int, fits: Callable[[int], bool]) -> tuple[int | None, list[int]]:
    """Largest index ``i`` in ``[0, n)`` with ``fits(i)``, assuming ``fits`` is monotone (True then False).

    Returns:
        ``(index or None, indices probed in order)``; about ``log2(n) + 2`` probes.
    """
    if n <= 0:
        return None, []
    probed: list[int] = []

    def probe(i: int) -> bool:
        probed.append(i)
        return fits(i)

    if not probe(0):
        return None, probed
    if n == 1 or probe(n - 1):
        return (n - 1 if n > 1 else 0), probed
    lo, hi = 0, n - 1  # fits(lo) is True, fits(hi) is False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return lo, probed
