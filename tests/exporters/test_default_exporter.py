"""The product default is torch's dynamo exporter; ``US3L_ONNX_EXPORTER`` overrides it (the suite
sets it to the legacy exporter for tests that export only as a means, see tests/conftest.py)."""

import json
import subprocess
import sys

import pytest

from us3l.core.errors import ExportError
from us3l.exporters import ExportConfig
from us3l.exporters.onnx_exporter import EXPORTER_ENV, default_exporter


def test_dynamo_is_the_default_without_the_variable(monkeypatch):
    monkeypatch.delenv(EXPORTER_ENV, raising=False)
    assert default_exporter() == "dynamo" and ExportConfig(arch="us_resnet_mini").onnx_exporter == "dynamo"
    monkeypatch.setenv(EXPORTER_ENV, "torchscript")
    assert ExportConfig(arch="us_resnet_mini").onnx_exporter == "torchscript"
    monkeypatch.setenv(EXPORTER_ENV, "tflite")
    with pytest.raises(ExportError, match="US3L_ONNX_EXPORTER='tflite' is not an ONNX exporter; valid: dynamo"):
        default_exporter()


def test_the_cli_exports_with_dynamo_by_default(tmp_path):
    """A real ``us3l export`` without the variable: the sidecar records the dynamo exporter."""
    env = {k: v for k, v in __import__("os").environ.items() if k != EXPORTER_ENV}
    proc = subprocess.run([sys.executable, "-m", "us3l.cli.main", "export", "--arch", "us_resnet_mini", "--widths",
                           "0.5", "--out", "x", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    sidecar = json.loads((tmp_path / json.loads(proc.stdout)["artifacts"][0]["sidecar"]).read_text())
    assert sidecar["format_info"]["exporter"] == "dynamo" and sidecar["opset"] == 17
