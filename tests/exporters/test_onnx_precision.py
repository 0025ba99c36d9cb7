"""ONNX FP16 / INT8 artifacts: ONNX Runtime's converter and static quantizer, the held-out cosine
gate, the calibration record, caching, and the TensorRT inputs derived from the stored ranges."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest

from us3l.core.errors import ParityError
from us3l.exporters import ExportConfig, run_export
from us3l.exporters.onnx_exporter import ort_session
from us3l.exporters.onnx_quant import accuracy_gate, read_ranges, tensorrt_calibration_cache, trt_version_tag

ARCH = "us_resnet_mini"


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    """Real digits training images (normalised, 16 px) saved as an .npy calibration set."""
    from us3l.core.data import DatasetSpec, load_split

    x, _ = load_split(DatasetSpec(), "train", resize=False)
    path = tmp_path_factory.mktemp("calib") / "digits.npy"
    np.save(path, x[:120].numpy())
    return path


@pytest.fixture(scope="module")
def int8(tmp_path_factory, calib_file):
    out = tmp_path_factory.mktemp("int8")
    res = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out), precision="int8", calib_data=str(calib_file),
                              int8_images=80, gate_images=20))
    return out, res


def test_int8_sidecar_records_calibration_and_gate(int8, calib_file):
    out, res = int8
    art = res.artifacts[0]
    assert art.path.name == "us_resnet_mini_w0.5_onnx_int8.onnx" and art.source.name == "us_resnet_mini_w0.5.onnx"
    side = json.loads(art.sidecar.read_text())
    cal = side["calibration"]
    assert cal["method"] == "minmax" and cal["images"] == 80 and cal["held_out_gate_images"] == 20
    assert cal["data"]["file"] == calib_file.name and (out / cal["ranges_file"]).is_file()  # no absolute path
    assert side["parity"]["gate"] == "cosine" and side["parity"]["passed"] and side["parity"]["num_images"] == 20
    assert side["parity"]["mean_cosine"] >= side["parity"]["min_cosine_required"] == 0.95
    ops = {n.op_type for n in onnx.load(str(art.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    again = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out), precision="int8", calib_data=str(calib_file),
                                int8_images=80, gate_images=20))
    assert again.artifacts[0].cached and again.artifacts[0].sha256 == art.sha256


def test_tensorrt_cache_from_stored_ranges(int8, calib_file):
    out, res = int8
    ranges = out / res.artifacts[0].calibration["ranges_file"]
    assert trt_version_tag((8, 6, 1)) == 8601 and trt_version_tag((10, 3, 0)) == 100300
    lines = tensorrt_calibration_cache(ranges, (8, 6, 1)).decode().splitlines()
    assert lines[0] == "TRT-8601-EntropyCalibration2"
    scales = {name: struct.unpack(">f", bytes.fromhex(h))[0] for name, h in (ln.split(": ") for ln in lines[1:])}
    assert "input" in scales and all(s > 0 for s in scales.values())
    lo, hi = read_ranges(ranges)["input"]  # MinMax over the calibration images: inside the file's range
    images = np.load(calib_file)
    assert images.min() <= lo < hi <= images.max()
    assert scales["input"] == pytest.approx(max(abs(lo), abs(hi)) / 127, rel=1e-6)


def test_fp16_keeps_float32_io(tmp_path, calib_file):
    res = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(tmp_path), precision="fp16", calib_data=str(calib_file)))
    art = res.artifacts[0]
    model = onnx.load(str(art.path))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    out = ort_session(art.path).run(None, {"input": np.zeros((2, 3, 16, 16), np.float32)})[0]
    assert out.dtype == np.float32 and art.parity["mean_cosine"] > 0.999


def test_gate_refuses_and_leaves_nothing(tmp_path, calib_file):
    with pytest.raises(ParityError, match="mean cosine"):
        run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(tmp_path / "g"), precision="int8",
                            calib_data=str(calib_file), int8_images=40, gate_images=10, min_cosine=1.0))
    assert not (tmp_path / "g").exists()


def test_accuracy_gate_by_hand():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    rec = accuracy_gate(ref, np.array([[1.0, 0.1], [0.0, 1.0]]), 0.99, "ort", "real", logits=True)
    assert rec.min_cosine == pytest.approx(1 / np.sqrt(1.01)) and rec.top1_agreement == 1.0 and rec.passed
    bad = accuracy_gate(ref, np.array([[0.0, 1.0], [np.nan, 1.0]]), 0.5, "ort", "real")
    assert not bad.passed and bad.max_abs_err == float("inf")
