"""Typed report rows: the report.json / latency.csv form of a BenchRow."""

from __future__ import annotations

from us3l.benchmarks.rows import CSV_COLUMNS, BenchRow
from us3l.benchmarks.stats import compute_stats


def test_row_from_a_fresh_point_has_the_csv_columns_first_then_the_intervals():
    point = {**compute_stats([1.0, 2.0, 3.0], batch=2).to_dict(), "source": "raw"}
    row = BenchRow.from_point(point, width=0.5, batch=2, precision="int8", sha256="ab", cached=False)
    d = row.to_dict()
    assert list(d)[: len(CSV_COLUMNS)] == list(CSV_COLUMNS) and list(d)[len(CSV_COLUMNS):] == ["ci_ms"]
    assert d["p50_ms"] == 2.0 and d["n"] == 3 and d["precision"] == "int8" and d["accuracy"] is None
    assert row.latency("p50") == 2.0 and row.latency("p95") is not None
    assert row.point_key == (0.5, 2, None)


def test_row_keeps_unknown_cached_fields_drops_the_timestamp_and_facts_win():
    cached = {"p50_ms": 1.5, "batch": 4, "measured_at": "2026-01-01T00:00:00+00:00", "future_field": 7}
    row = BenchRow.from_point(cached, width=1.0, batch=1, cached=True)
    d = row.to_dict()
    assert row.batch == 1 and "measured_at" not in d and d["future_field"] == 7 and "ci_ms" not in d
    assert "searched" not in d and row.replace(searched=True).to_dict()["searched"] is True


def test_stdout_summary_row_lacks_percentiles_and_says_so():
    summary = {"n": None, "p50_ms": 2.0, "mean_ms": 2.1, "p95_ms": None, "batch": 1}
    row = BenchRow.from_point({**summary, "source": "stdout"}, width=0.25)
    assert row.latency("p95") is None and row.to_dict()["source"] == "stdout"
