"""perf/task_models.py runs end to end in its tiny setting and writes the numbers it prints.

Two calls, as the Fashion-MNIST figures were taken: the scratch baselines alone first (they do not
need the SSL weights), then (b) and (c) with the first call's runs included and the INT8 part.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "task_models.py"


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--jobs", "1", "--work", str(tmp_path / "w"), *args],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_tiny_task_model_figures(tmp_path):
    first, out = tmp_path / "scratch.json", tmp_path / "figures.json"
    proc = _run(tmp_path, "--methods", "scratch", "--json", str(first))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    early = json.loads(first.read_text())
    assert early["knn"] == {} and {r["method"] for r in early["runs"]} == {"scratch"}
    assert "(b) within 1 point of the per-width probe: 0.25 n/a" in proc.stdout  # no (b), (c) yet: no verdict
    assert all(g["b_within_1pt_of_probe"] is None and g["c_minus_d"] is None for g in early["goals"])  # null, not NaN
    assert early["settings"]["head"] == "per-width" and all(r["epochs"] == 1 for r in early["runs"])
    assert set(early["summary"]["scratch"]) == {"0.25", "1.0"} and early["summary"]["finetune"] == {}

    proc = _run(tmp_path, "--methods", "frozen,finetune", "--include", str(first), "--int8", "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert sorted(data["knn"]) == sorted(data["probe"]) == ["0.25", "1.0"] and data["settings"]["tiny"]
    assert {(r["method"], r["width"]) for r in data["runs"]} == {
        ("frozen", None), ("finetune", None), ("scratch", 0.25), ("scratch", 1.0)}
    assert [r for r in data["runs"] if r["method"] == "scratch"] == early["runs"]  # included, not re-run
    assert all(len(r["history"]) == 1 and r["history"][0]["loss_max"] > 0 for r in data["runs"])  # 1 tiny epoch
    for m in ("frozen", "finetune", "scratch"):
        assert set(data["summary"][m]) == {"0.25", "1.0"}
        assert all(0 <= v["mean"] <= 1 and v["n"] == 1 for v in data["summary"][m].values())
    assert [g["width"] for g in data["goals"]] == [0.25, 1.0]
    assert "(c) within 1 point of (d) at the same epochs" in proc.stdout
    assert all(r["head"] == "per-width" for r in data["runs"]) and data["settings"]["epochs_run"] == [1]
    assert all(g["b_minus_probe"] is not None for g in data["goals"])
    c = 100 * data["summary"]["finetune"]["1.0"]["mean"]
    assert f"{c:.1f}" in proc.stdout
    # the INT8 part: one FP32 and one INT8 ONNX classifier per width, each measured on its own
    arts = data["artifacts"]
    assert sorted((a["width"], a["precision"]) for a in arts) == [
        (0.25, "fp32"), (0.25, "int8"), (1.0, "fp32"), (1.0, "int8")]
    for a in arts:
        assert Path(a["artifact"]).is_file() and 0 <= a["top1"] <= 1
    assert all(a["gate_mean_cosine"] is not None for a in arts if a["precision"] == "int8")
    int8_bytes = {a["width"]: a["bytes"] for a in arts if a["precision"] == "int8"}
    assert all(int8_bytes[a["width"]] < a["bytes"] for a in arts if a["precision"] == "fp32")
    # the FP32 classifier agrees with (c)'s PyTorch top-1 (same weights and BN bank; exact parity gate)
    torch_top1 = next(r for r in data["runs"] if r["method"] == "finetune")["top1"]
    for a in arts:
        if a["precision"] == "fp32":
            assert abs(a["top1"] - torch_top1[str(a["width"])]) <= 0.01
    assert "as ONNX classifiers" in proc.stdout


def test_include_with_other_settings_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {"recipe": "cifar", "epochs": None, "widths": [0.25, 1.0], "tiny": True},
                                 "runs": []}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--jobs", "1", "--methods", "none",
                           "--include", str(other), "--ssl-checkpoint", str(tmp_path / "unused.pt"),
                           "--work", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "differ from this run's" in proc.stderr


def test_int8_without_a_finetune_run_is_refused_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--jobs", "1", "--methods", "scratch", "--int8",
                           "--ssl-checkpoint", str(tmp_path / "unused.pt"), "--work", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--int8 needs a (c) finetune run" in proc.stderr
    assert not (tmp_path / "w" / "scratch_s0").exists()


def test_include_of_runs_from_another_ssl_checkpoint_is_refused(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {"recipe": "digits", "epochs": 1, "widths": [0.25, 1.0], "tiny": True,
                                              "head": "per-width", "ssl_checkpoint": str(tmp_path / "a.pt")},
                                 "runs": [{"method": "finetune", "seed": 0, "width": None, "top1": {}}]}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--jobs", "1", "--methods", "none",
                           "--include", str(other), "--ssl-checkpoint", str(tmp_path / "b.pt"),
                           "--work", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "start from" in proc.stderr and "b.pt" in proc.stderr
