"""perf/finetune_diagnosis.py: each kind trains what it says, on a tiny digits run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "finetune_diagnosis.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    import torch

    from us3l.core.checkpoint import Checkpoint, save_checkpoint
    from us3l.core.data import DatasetSpec
    from us3l.core.models import get_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("diag") / "ssl.pt"
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini"), dataset=DatasetSpec("digits").to_dict()), path)
    return path


@pytest.mark.parametrize(("kind", "widths", "method"), [
    ("ssl-alone", ["0.5"], "finetune"), ("slim-scratch", ["0.25", "0.5", "0.75", "1.0"], "scratch")])
def test_kinds(untrained, tmp_path, kind, widths, method):
    out = tmp_path / "d.json"
    proc = _run(str(untrained), "--kind", kind, "--width", "0.5", "--recipe", "digits", "--epochs", "2",
                "--max-steps-per-epoch", "2", "--out", str(tmp_path / "o"), "--json", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert sorted(data["top1"]) == widths and data["epochs"] == 2 and len(data["history"]) == 2
    assert "epoch   2: loss max width" in proc.stdout
    saved = Path(data["checkpoint"])
    assert saved.is_file() and saved.parent == tmp_path / "o" / kind
    rows = json.loads((saved.parent / "accuracy.json").read_text())["results"]  # how each row was measured
    assert {r["details"]["trained_by"] for r in rows} == {method}  # SSL start (finetune) or random start (scratch)


def test_missing_checkpoint_exit_2(tmp_path):
    proc = _run(str(tmp_path / "nope.pt"), "--kind", "slim-ssl", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "nope.pt" in proc.stderr
