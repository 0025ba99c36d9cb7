"""Precision as a deployment dimension, end to end through the CLI: bench measures every
(width, precision) pair; an INT8 artifact's own accuracy enters accuracy.json keyed by precision;
bench never copies the FP32 accuracy to INT8. Timings are not asserted (noisy shared CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from us3l.cli.main import app

QUICK = ["--iterations", "3", "--rounds", "1", "--warmup-ms", "0", "--no-plot"]


def _invoke(*args: str):
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res


def test_bench_measures_every_width_precision_pair(tmp_path):
    out = tmp_path / "bench"
    _invoke("bench", "--arch", "us_resnet18_cifar", "--device", "cpu", "--widths", "0.5,1.0",
            "--precision", "fp32,int8", "--out", str(out), *QUICK)
    report = json.loads((out / "report.json").read_text())
    pairs = {(r["width"], r["precision"]) for r in report["results"]}
    assert pairs == {(0.5, "fp32"), (1.0, "fp32"), (0.5, "int8"), (1.0, "int8")}
    assert report["precisions"] == ["fp32", "int8"]
    for r in report["results"]:
        assert r["p50_ms"] > 0 and r["cov"] is not None and r["ci_ms"]["p95"][0] <= r["p95_ms"] <= r["ci_ms"]["p95"][1]
        assert r["artifact"].endswith("_onnx_int8.onnx" if r["precision"] == "int8" else "w%s.onnx" % r["width"])
    csv_header = (out / "latency.csv").read_text().splitlines()[0].split(",")
    assert {"precision", "ci_low_ms", "ci_high_ms", "artifact"} <= set(csv_header)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A briefly trained digits checkpoint at 8 px (real SSL training, 1 epoch of 3 steps)."""
    root = tmp_path_factory.mktemp("digits")
    _invoke("train", "--epochs", "1", "--max-steps-per-epoch", "3", "--image-size", "8", "--out", str(root / "run"))
    return root / "run" / "checkpoint.pt"


def test_int8_artifact_accuracy_is_its_own_and_never_borrowed(trained, tmp_path):
    ckpt = trained
    _invoke("eval", str(ckpt), "--widths", "0.5", "--calib-batches", "2")  # PyTorch rows: not the files bench times
    bench_out = tmp_path / "bench"
    _invoke("bench", str(ckpt), "--widths", "0.5", "--precision", "fp32,int8", "--out", str(bench_out), *QUICK)
    report = json.loads((bench_out / "report.json").read_text())
    rows = {r["precision"]: r for r in report["results"]}
    assert all(r["accuracy"] is None and r["accuracy_source"] == "unknown" for r in rows.values())
    assert report["accuracy_unknown"] == [{"width": 0.5, "precision": "fp32"}, {"width": 0.5, "precision": "int8"}]
    note = report["accuracy_unknown_note"]
    assert "never taken from another file" in note and Path(rows["int8"]["artifact"]).name in note

    art_dir = tmp_path / "onnx"  # the same file exported elsewhere: joined by its sha256, wherever it lies
    _invoke("export", str(ckpt), "--width", "0.5", "--precision", "int8", "--out", str(art_dir))
    side = json.loads(next(art_dir.glob("*_onnx_int8.json")).read_text())
    assert side["calibration"]["method"] == "minmax" and side["calibration"]["kind"] == "real"
    assert side["calibration"]["images"] > 0 and side["parity"]["gate"] == "cosine" and side["parity"]["passed"]
    artifact = art_dir / side["artifact"]
    assert side["sha256"] == rows["int8"]["sha256"]  # deterministic export
    _invoke("eval", str(ckpt), "--artifact", str(artifact))
    table = json.loads((ckpt.parent / "accuracy.json").read_text())["results"]
    keyed = {(r["width"], r["precision"], r["source"]): r for r in table}
    assert set(keyed) == {(0.5, "fp32", "pytorch"), (0.5, "int8", "artifact")}  # the fp32 row is kept, int8 added
    int8 = keyed[(0.5, "int8", "artifact")]
    assert 0 <= int8["knn"] <= 1 and int8["artifact"] == artifact.name and int8["sha256"] == side["sha256"]
    _invoke("bench", str(ckpt), "--widths", "0.5", "--precision", "fp32,int8", "--out", str(bench_out), *QUICK)
    rows = {r["precision"]: r for r in json.loads((bench_out / "report.json").read_text())["results"]}
    assert rows["int8"]["accuracy"] == int8["knn"] and rows["int8"]["accuracy_source"] == "measured"
    assert rows["fp32"]["accuracy"] is None  # the PyTorch row is not the fp32 file's
    # --measure-accuracy evaluates the timed file that has no row (the fp32 one), and only that one
    _invoke("bench", str(ckpt), "--widths", "0.5", "--precision", "fp32,int8", "--out", str(bench_out),
            "--measure-accuracy", *QUICK)
    rows = {r["precision"]: r for r in json.loads((bench_out / "report.json").read_text())["results"]}
    assert rows["fp32"]["accuracy_source"] == "measured" and rows["int8"]["accuracy"] == int8["knn"]
    table = json.loads((ckpt.parent / "accuracy.json").read_text())["results"]
    fp32_file = [r for r in table if r["source"] == "artifact" and r["precision"] == "fp32"]
    assert len(fp32_file) == 1 and fp32_file[0]["sha256"] == rows["fp32"]["sha256"]
    assert fp32_file[0]["knn"] == rows["fp32"]["accuracy"] and len(table) == 3  # tables only grow


def test_eval_artifact_refuses_another_checkpoints_file(trained, tmp_path):
    res = CliRunner().invoke(app, ["export", "--arch", "us_resnet_mini", "--width", "0.5", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["eval", str(trained), "--artifact", str(tmp_path / "us_resnet_mini_w0.5.onnx")])
    assert res.exit_code == 2 and "another checkpoint" in res.stderr
