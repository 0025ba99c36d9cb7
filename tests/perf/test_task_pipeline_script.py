"""perf/task_pipeline.py runs end to end in its tiny setting and writes the figures it prints (the
memory goal itself is measured on 2,000 / 16,000 files by hand; tiny folders say nothing about it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tiny_task_pipeline_figures(tmp_path):
    out = tmp_path / "tp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "perf.task_pipeline", "--tiny", "--workers", "1", "--cache",
                           str(tmp_path / "cache"), "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads(out.read_text())
    assert set(data["runs"]) == {"finetune", "eval"} and set(data["ratios"]) == {"finetune", "eval"}
    for command, runs in data["runs"].items():
        assert set(runs) == {"200", "400"}
        assert all(r["peak_pss_mb"] > 0 and r["processes"] >= 2 for r in runs.values())  # a loader process ran
        assert data["ratios"][command]["peak_pss"] > 0 and isinstance(data["pass"][command], bool)
    assert "memory ratio 400/200" in done.stderr and data["loadavg_start"]
