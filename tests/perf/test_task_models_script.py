"""perf/task_models.py runs end to end in its tiny setting and writes the numbers it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "task_models.py"


@pytest.mark.slow
def test_tiny_task_model_figures(tmp_path):
    out = tmp_path / "figures.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--jobs", "1", "--work", str(tmp_path / "w"),
                           "--json", str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert sorted(data["knn"]) == sorted(data["probe"]) == ["0.25", "1.0"] and data["settings"]["tiny"]
    assert {(r["method"], r["width"]) for r in data["runs"]} == {
        ("frozen", None), ("finetune", None), ("scratch", 0.25), ("scratch", 1.0)}
    for m in ("frozen", "finetune", "scratch"):
        assert set(data["summary"][m]) == {"0.25", "1.0"}
        assert all(0 <= v["mean"] <= 1 and v["n"] == 1 for v in data["summary"][m].values())
    assert [g["width"] for g in data["goals"]] == [0.25, 1.0]
    assert "(c) within 1 point of (d)" in proc.stdout
    c = 100 * data["summary"]["finetune"]["1.0"]["mean"]
    assert f"{c:.1f}" in proc.stdout
