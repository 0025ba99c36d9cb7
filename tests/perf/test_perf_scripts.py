"""Every hand-run script in perf/ starts as the README writes it: ``python perf/NAME.py --help``
(a file, from the repository root) exits 0 and prints its usage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.name for p in (ROOT / "perf").glob("*.py"))


def test_the_list_is_not_empty():
    assert "gpu_check.py" in SCRIPTS and len(SCRIPTS) >= 10


@pytest.mark.parametrize("name", SCRIPTS)
def test_perf_script_help_runs_as_a_file(name):
    done = subprocess.run([sys.executable, f"perf/{name}", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage:") and name in done.stdout.splitlines()[0]
