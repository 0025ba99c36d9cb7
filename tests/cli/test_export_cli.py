"""`us3l export` end to end in a subprocess: artifacts + sidecars, and one-line errors (exit 2,
no traceback, output directory absent) for bad widths, formats, directories and checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

US3L = shutil.which("us3l", path=str(Path(sys.executable).parent)) or "us3l"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # correctness test; do not oversubscribe a shared 2-core runner


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([US3L, "export", *args], capture_output=True, text=True, env=ENV, timeout=300)


def test_export_writes_onnx_and_sidecar(tmp_path):
    out = tmp_path / "DIR"
    res = run("--arch", "us_resnet18_cifar", "--width", "0.35", "--format", "onnx", "--out", str(out))
    assert res.returncode == 0, res.stderr
    onnx_files, sidecars = list(out.glob("*.onnx")), list(out.glob("*.json"))
    assert [p.name for p in onnx_files] == ["us_resnet18_cifar_w0.35.onnx"] and len(sidecars) == 1
    side = json.loads(sidecars[0].read_text())
    assert side["width"] == 0.35 and side["parity"]["passed"] and side["parity"]["max_abs_err"] <= 1e-4
    assert side["untrained"] is True and side["channels"]["conv1"] == 24
    assert "1 artifact(s)" in res.stdout and "0.35" in res.stdout


def _error_args(tmp_path: Path, case: str) -> tuple[list[str], Path]:
    out = tmp_path / "DIR"
    args = ["--arch", "us_resnet18_cifar", "--width", "0.35", "--out", str(out)]
    if case == "width":
        args[3] = "1.5"
    elif case == "format":
        args += ["--format", "tflite"]
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        out = blocker / "DIR"
        args[-1] = str(out)
    else:
        ckpt = tmp_path / "ckpt.pt"
        ckpt.write_bytes(b"PK\x03\x04 this is not a checkpoint")
        args = [str(ckpt), "--width", "0.35", "--out", str(out)]
    return args, out


def _check_one_line(code: int, stdout: str, stderr: str, out: Path) -> None:
    assert code == 2, (stdout, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr + stdout
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("case", ["width", "corrupt"])
def test_bad_input_subprocess_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    args, out = _error_args(tmp_path, case)
    res = run(*args)
    _check_one_line(res.returncode, res.stdout, res.stderr, out)


@pytest.mark.parametrize("case", ["width", "format", "unwritable", "corrupt"])
def test_bad_input_in_process(tmp_path, case):
    """Same checks through typer's test runner (same command code, no interpreter start-up)."""
    from typer.testing import CliRunner

    from us3l.cli.main import app

    args, out = _error_args(tmp_path, case)
    res = CliRunner().invoke(app, ["export", *args])
    _check_one_line(res.exit_code, res.stdout, res.stderr, out)
