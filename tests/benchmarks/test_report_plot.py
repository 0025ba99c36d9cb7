"""latency.png is written for every shape of result: all widths rated, some unrated (an
accuracy.json covering only part of the ladder), none rated, and rows missing the metric."""

from __future__ import annotations

import pytest

from us3l.benchmarks.report import write_plot


def _rows(acc):
    return [{"width": w, "batch": 1, "p95_ms": 1.0 + w, "macs": int(w * 1e6), "accuracy": a} for w, a in acc.items()]


@pytest.mark.parametrize("acc", [
    {0.25: 0.8, 0.5: 0.85, 1.0: 0.9},
    {0.25: 0.8, 0.5: None, 1.0: 0.9},      # 0.5 never evaluated: the crash this test pins
    {0.25: None, 0.5: None, 1.0: None},
])
def test_plot_written(tmp_path, acc):
    rows = _rows(acc)
    chosen = {"width": 1.0, "latency_ms": 2.0, "accuracy": acc[1.0]}
    path = write_plot(tmp_path / "latency.png", rows, "p95", chosen, 2.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_skips_rows_without_the_metric(tmp_path):
    rows = _rows({0.25: 0.8, 1.0: 0.9})
    rows[0]["p95_ms"] = None  # trtexec stdout fallback without percentiles
    assert write_plot(tmp_path / "p.png", rows, "p95", None, None).stat().st_size > 0
