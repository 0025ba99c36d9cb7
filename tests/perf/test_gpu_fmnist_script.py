"""perf/gpu_fmnist.py (the full comparison sized for one GPU) runs end to end with --tiny --device cpu:
the throughput estimate of three concurrent processes sizes the epochs, the three methods train at once,
and the same tables and JSON as perf/fmnist_claims.py come out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "gpu_fmnist.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


@pytest.mark.slow
def test_tiny_gpu_comparison_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--work", str(tmp_path / "w"),
                           "--threads", "1", "--json", str(out)], check=False, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text_out = " ".join(proc.stdout.split())  # rich wraps lines at 80 columns where the numbers make them long
    data = json.loads(out.read_text())
    est, st = data["estimate"], data["settings"]
    # the estimate: the three processes' throughput, and the epochs that fit the minutes given (capped at 2 here)
    assert set(est["img_per_s"]) == {"us3l", "naive", "naive-contrastive"} and all(v > 0 for v in est["img_per_s"].values())
    slowest = max(est["epoch_s"].values())
    assert est["epochs"] == max(1, int(est["minutes"] * 60 // slowest)) and st["epochs"] == min(est["epochs"], 2)
    assert f"{st['epochs']} epoch(s) fit 7 min of training" in text_out, proc.stdout
    # the protocol of perf/fmnist_claims.py at full size, with the GPU runtime settings (off on the CPU)
    assert (st["train_size"], st["test_size"], st["image_size"], st["augmentation"]) == (128, 64, 28, "gray")
    assert st["device"] == "cpu" and not st["amp"] and not st["channels_last"]
    assert st["lr"] == pytest.approx(0.1 * st["batch_size"] / 128)  # linear scaling from the recipe's 0.1 at 128
    runs = {r["method"]: r for r in data["runs"]}
    assert set(runs) == {"us3l", "naive", "naive-contrastive", "random"}
    for kind in ("us3l", "naive", "naive-contrastive"):
        assert [p["epoch"] for p in runs[kind]["curve"]] == list(range(1, st["epochs"] + 1))
        assert sorted(runs[kind]["knn"]) == ["0.25", "0.5", "0.75", "1.0"] and set(runs[kind]["linear"]) == {"0.25", "1.0"}
    assert set(data["raw_pixels"]) == {"knn", "linear"} and data["trend"]["per_seed"]
    for text in ("raw pixels, kNN", "raw pixels, linear probe", "naive (reference)", "naive-contrastive",
                 "learning curves", "US3L - naive (reference) at width 0.25"):
        assert text in text_out, text


def test_cuda_asked_where_there_is_none_is_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--work", str(tmp_path)], check=False, capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "CUDA is not available" in proc.stderr
