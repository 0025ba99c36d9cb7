"""CLI conventions across commands: --widths (alias --width), --json on every command that produces
results, and tables that stay readable in 80 columns (values never cut to ``0.91…``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

US3L = [sys.executable, "-m", "us3l.cli.main"]


def _run(args: list[str], cwd: Path, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run([*US3L, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


TRAIN_TABLE: dict[str, str] = {}  # the fixture's own train output at 80 columns (one training run for the module)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("conventions")
    TRAIN_TABLE["stdout"] = _run(["train", "--epochs", "1", "--max-steps-per-epoch", "2", "--out", "run"], d).stdout
    _run(["eval", "run/checkpoint.pt", "--widths", "0.25,1.0", "--calib-batches", "2", "--store-bn"], d)
    return d


def _no_cut_values(text: str) -> None:
    lines = text.splitlines()
    assert not [ln for ln in lines if "…" in ln], text
    assert max(len(ln) for ln in lines) <= 80, text


@pytest.mark.slow
def test_tables_fit_80_columns_without_cutting_values(run_dir):
    outs = {
        "train": TRAIN_TABLE["stdout"],
        "eval": _run(["eval", "run/checkpoint.pt", "--width", "0.25,1.0", "--calib-batches", "2"], run_dir).stdout,
        "widths": _run(["widths", "run/checkpoint.pt", "--width", "0.25:1.0:0.05"], run_dir).stdout,
        "export": _run(["export", "run/checkpoint.pt", "--widths", "0.25,1.0", "--out", "onnx"], run_dir).stdout,
        "bench": _run(["bench", "run/checkpoint.pt", "--width", "0.25,1.0", "--iterations", "3", "--rounds", "1",
                       "--warmup-ms", "1", "--budget-ms", "50", "--out", "b", "--no-plot"], run_dir).stdout,
    }
    for name, text in outs.items():
        assert text.strip(), name
        _no_cut_values(text)
    assert "0.25" in outs["export"] and "0.25" in outs["bench"]


@pytest.mark.slow
def test_every_result_command_speaks_json(run_dir):
    train = json.loads(_run(["train", "--epochs", "1", "--max-steps-per-epoch", "2", "--out", "run3", "--json"],
                            run_dir).stdout)
    assert train["checkpoint"].endswith("run3/checkpoint.pt") and train["epochs"] == 1
    rows = json.loads(_run(["eval", "run/checkpoint.pt", "--widths", "0.25", "--calib-batches", "2", "--json"],
                           run_dir).stdout)
    assert rows[0]["width"] == 0.25
    widths = json.loads(_run(["widths", "run/checkpoint.pt", "--widths", "0.5", "--json"], run_dir).stdout)
    assert widths[0]["width"] == 0.5
    exported = json.loads(_run(["export", "run/checkpoint.pt", "--width", "0.5", "--out", "onnx", "--json"],
                               run_dir).stdout)
    assert Path(run_dir / exported["artifacts"][0]["path"]).is_file() and exported["artifacts"][0]["width"] == 0.5
    report = json.loads(_run(["bench", "run/checkpoint.pt", "--widths", "0.5", "--iterations", "3", "--rounds", "1",
                              "--warmup-ms", "1", "--out", "b", "--no-plot", "--json"], run_dir).stdout)
    assert [r["width"] for r in report["results"]] == [0.5]


def test_export_batch_takes_one_value_in_bench_syntax(tmp_path):
    proc = subprocess.run([*US3L, "export", "--arch", "us_resnet_mini", "--batch", "1,8", "--out", "x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "one fixed batch size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_files_written_by_export_honour_the_umask(tmp_path):
    """Under umask 022 every file ``us3l export`` writes is 0644 (the atomic writer's temp files are
    0600 until they take the umask's mode)."""
    import stat

    proc = subprocess.run([*US3L, "export", "--arch", "us_resnet_mini", "--widths", "0.5", "--out", "x"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    files = [p for p in (tmp_path / "x").rglob("*") if p.is_file()]
    assert files and {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o644"}, files
