"""perf/gpu_check.py runs end to end on CPU in its tiny setting (no GPU here; the numbers mean nothing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_tiny_on_cpu_prints_one_json(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "perf.gpu_check", "--tiny", "--device", "cpu", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    it = printed["iteration"]
    assert it["arch"] == "us_resnet_mini" and it["images_per_s"] > 0 and it["ratio"] > 0
    assert 0 < it["groupreg_share"] < 1 and it["amp"] is False  # AMP is CUDA-only
    assert set(printed["torch_runner_ms_batch1"]) == {"0.25", "0.5", "0.75", "1"}
    assert all(v > 0 for v in printed["torch_runner_ms_batch1"].values())
    assert printed["peak_gpu_memory_mb"] is None and printed["tiny"] is True


def test_gpu_check_refuses_a_full_run_without_cuda():
    done = subprocess.run([sys.executable, "-m", "perf.gpu_check", "--device", "cpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "only --tiny is meaningful" in done.stderr
