"""`us3l bench` end to end on this CPU with the real exporter and ONNX Runtime."""

from __future__ import annotations

import csv
import json
import shutil
import socket
import time

import pytest
from typer.testing import CliRunner

from us3l.cli.main import app

runner = CliRunner()
FAST = ["--duration", "0.2", "--rounds", "2", "--warmup-ms", "50"]


def test_bench_writes_reports_and_latency_grows_with_width(tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--arch", "us_resnet18_cifar", "--device", "cpu", "--widths", "0.25:1.0:0.25",
            "--budget-ms", "1000", "--out", str(out), *FAST]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "chosen width" in res.output
    report = json.loads((out / "report.json").read_text())
    rows = report["results"]
    assert [r["width"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert all({"width", "p50_ms", "p95_ms", "macs", "channels", "throughput"} <= r.keys() for r in rows)
    assert isinstance(report["chosen"], dict) and report["chosen"]["width"] in (0.25, 0.5, 0.75, 1.0)
    # ONNX Runtime CPU latency tracks MACs (~w^2): a ~15x margin between widths 0.25 and 1.0 (docs/deployment.md §15.4)
    assert rows[-1]["p50_ms"] > rows[0]["p50_ms"]
    assert len(list(csv.DictReader((out / "latency.csv").open()))) == 4
    assert (out / "latency.png").read_bytes()[:4] == b"\x89PNG"
    again = runner.invoke(app, args)  # cached: no export, no measurement
    assert again.exit_code == 0, again.output
    assert all(r["cached"] for r in json.loads((out / "report.json").read_text())["results"])


def test_unknown_device_exits_2_listing_devices(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    res = runner.invoke(app, ["bench", "--arch", "us_resnet18_cifar", "--device", "tpu9"])
    assert res.exit_code == 2
    assert "unknown device 'tpu9'; valid: cpu, cuda, jetson" in res.output


def test_unknown_runner_exits_2(tmp_path, message_lines):
    res = runner.invoke(app, ["bench", "--arch", "us_resnet18_cifar", "--runner", "tflite", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--runner 'tflite' is invalid; valid: torch, onnxruntime, tensorrt, trtexec" in res.output
    assert len(message_lines(res.output)) == 1


@pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH client not installed")
def test_unreachable_host_is_one_line_within_timeout(tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    devices = tmp_path / "devices.toml"
    devices.write_text(f'[devices.lab]\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout = 3\n'
                       f'known_hosts = "{tmp_path / "known_hosts"}"\n')
    start = time.time()
    res = runner.invoke(app, ["bench", "--arch", "us_resnet18_cifar", "--device", "lab", "--devices-file", str(devices),
                              "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "unreachable" in lines[0], res.output
    assert time.time() - start < 3 + 15
