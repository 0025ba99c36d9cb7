"""perf/threads.py runs end to end on its smallest setting: it prepares a checkpoint, starts the busy
process it is asked for (and stops it), runs the command, and writes the figures it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "threads.py"


@pytest.mark.slow
def test_threads_script_smallest_setting(tmp_path):
    out = tmp_path / "threads.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--commands", "eval", "--variants", "auto", "--loads", "busy",
                           "--busy", "1", "--keep", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert [(r["load"], r["command"], r["setting"], r["exit"]) for r in data["runs"]] == [("busy", "eval", "auto", 0)]
    assert data["summary"]["cells"]["busy/eval/auto"]["ratio"] == 1.0 and data["summary"]["goal_met"]
    assert "| busy | eval |" in proc.stdout and "worst ratio" in proc.stdout
    # the busy process it started is gone
    assert len(data["busy_pids"]) == 1
    for pid in data["busy_pids"]:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
