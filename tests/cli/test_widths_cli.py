"""`us3l widths` end to end, and the one-line exit-2 error contract via a real subprocess."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from us3l.cli.main import app

runner = CliRunner()


def test_widths_table_lists_channels_macs_params_and_aliases():
    res = runner.invoke(app, ["widths", "--arch", "us_resnet_mini", "--widths", "0.35,0.4,1.0"])
    assert res.exit_code == 0, res.output
    assert "16/16/24/48" in res.output and "0.35" in res.output and "aliases" in res.output


def test_widths_json():
    res = runner.invoke(app, ["widths", "--arch", "us_resnet18_cifar", "--widths", "0.25,0.35,0.5,1.0", "--json"])
    assert res.exit_code == 0
    rows = json.loads(res.stdout)
    assert [r["width"] for r in rows] == [0.25, 0.35, 0.5, 1.0]
    assert set(rows[0]) >= {"width", "channels", "macs", "params"}
    assert rows[1]["channels"]["layer4.1.conv2"] == 176 and rows[1]["channels"]["conv1"] == 24
    assert rows[0]["macs"] < rows[-1]["macs"] and rows[0]["params"] < rows[-1]["params"]


def test_widths_accepts_ranges():
    res = runner.invoke(app, ["widths", "--widths", "0.25:1.0:0.05", "--json"])
    assert len(json.loads(res.stdout)) == 16


@pytest.mark.parametrize("args,needle", [
    (["widths", "--widths", "1.5"], "valid: [0.25, 1.0]"),
    (["widths", "--widths", "0"], "valid"),
    (["widths", "--widths", "nan"], "valid"),
    (["widths", "--widths", "abc"], "valid"),
    (["widths", "--widths", "0.5:0.25:0.05"], "empty"),
    (["widths", "--arch", "resnet9000"], "us_resnet18_cifar"),
])
def test_bad_input_is_one_line_exit_2(args, needle, message_lines):
    proc = subprocess.run([sys.executable, "-m", "us3l.cli.main", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = message_lines(proc.stderr)
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_lists_every_command():
    res = runner.invoke(app, ["--help"])
    for cmd in ("train", "eval", "export", "bench", "widths"):
        assert cmd in res.output


def test_cli_import_is_light():
    # `us3l --help` must stay instant: no command module may import torch/onnx/... at module level.
    code = "import sys, us3l.cli.main; heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'matplotlib', 'kornia', 'sklearn') if m in sys.modules]; print(heavy)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
