"""TensorRT exporter logic, tested WITHOUT TensorRT.

TensorRT cannot be installed on the CI machines (its wheels fetch from an unreachable host) and
there is no GPU. These tests inject an explicit stand-in: a fake ``tensorrt`` module put into
``sys.modules`` that records every builder call (``FakeTensorRT`` below), with ``device_info``
patched to report a GPU. They check the pure logic — TensorRT <= 10 vs >= 11 precision branches,
optimization-profile shapes, workspace limit, timing-cache load/save/reuse, INT8 calibration
batching (>= 500 images or the whole set), the raw-plan engine file and the sidecar facts — not
that TensorRT builds a working engine; that needs a GPU host (the benchmark's remote trtexec path).
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch

from us3l.exporters import ExportConfig, ExportRequest, run_export, get_exporter
from us3l.exporters import trt_build, trt_exporter
from us3l.exporters.onnx_precision import to_fp16
from us3l.exporters.trt_build import calibration_batches, precision_plan, profile_shapes, trt_version
from us3l.core.bn import calibrate_bn
from us3l.core.errors import BackendUnavailableError, ExportError
from us3l.core.models import get_model
from us3l.core.slicing import slice_to_width

PLAN = b"\x00fake-serialized-plan\x01"


class _Recorder:
    def __init__(self, log: list) -> None:
        self.log = log


def fake_tensorrt(version: str) -> types.ModuleType:
    """A stand-in ``tensorrt`` module of the given version that records builder calls in ``trt.calls``."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = calls = []
    major = int(version.split(".")[0])

    class Logger:
        WARNING = "WARNING"

        def __init__(self, level):
            calls.append(("logger", level))

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile", name, tuple(lo), tuple(opt), tuple(hi)))

    class Cache:
        def __init__(self, data: bytes):
            self.data = data

        def serialize(self):
            return b"cache<" + self.data + b">"

    class Config:
        def __init__(self):
            self.int8_calibrator = None
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            calls.append(("pool", pool, size))

        def set_flag(self, flag):
            calls.append(("flag", flag))

        def add_optimization_profile(self, p):
            calls.append(("add_profile",))

        def set_calibration_profile(self, p):
            calls.append(("calibration_profile",))

        def create_timing_cache(self, data):
            calls.append(("timing_cache_in", bytes(data)))
            return Cache(bytes(data))

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("network", flags))
            return object()

        def create_builder_config(self):
            self.config = Config()
            return self.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append(("build", config.int8_calibrator))
            return PLAN

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            pass

        def parse(self, data):
            calls.append(("parse", bytes(data)))
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    if major <= 10:  # TensorRT 11 removed the precision flags
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    else:
        trt.BuilderFlag = types.SimpleNamespace()
    return trt


@pytest.fixture()
def fake_gpu(monkeypatch):
    """Install a fake TensorRT of a chosen version and pretend a GPU is present."""

    def install(version: str) -> types.ModuleType:
        trt = fake_tensorrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(trt_exporter, "device_info",
                            lambda: {"gpu": "Fake Orin", "compute_capability": "8.7", "cuda": "12.6"})
        return trt

    return install


def test_precision_branches_per_version():
    assert precision_plan(10, "fp32", False) == trt_build.PrecisionPlan(False, (), False, None)
    assert precision_plan(8, "fp16", False).builder_flags == ("FP16",)
    int8_10 = precision_plan(10, "int8", False)
    assert int8_10.builder_flags == ("FP16", "INT8") and int8_10.calibrator and not int8_10.strongly_typed
    fp16_11 = precision_plan(11, "fp16", False)
    assert fp16_11.strongly_typed and fp16_11.builder_flags == () and fp16_11.onnx_conversion == "fp16"
    assert precision_plan(11, "int8", True).onnx_conversion == "int8-qdq"
    with pytest.raises(BackendUnavailableError, match=r"nvidia-modelopt\[onnx\]"):
        precision_plan(11, "int8", False)
    assert trt_version(types.SimpleNamespace(__version__="10.3.0.26")) == (10, 3, 0, 26)
    assert trt_version(types.SimpleNamespace(__version__="11.4.0.106")) == (11, 4, 0, 106)


def test_profile_shapes():
    assert profile_shapes((3, 32, 32), None, 1, 32) == ((1, 3, 32, 32), (1, 3, 32, 32), (32, 3, 32, 32))
    assert profile_shapes((3, 32, 32), None, 8, 64)[1] == (8, 3, 32, 32)
    assert profile_shapes((3, 224, 224), 4) == ((4, 3, 224, 224),) * 3
    with pytest.raises(ExportError):
        profile_shapes((3, 32, 32), None, 64, 32)


def test_calibration_batches_500_or_whole_set():
    images = np.arange(1200, dtype=np.float32).reshape(1200, 1, 1, 1)
    batches = calibration_batches(images, 32)
    assert len(batches) == 16 and all(b.shape == (32, 1, 1, 1) for b in batches)  # ceil(500 / 32)
    seen = np.concatenate(batches).ravel()
    assert set(seen) == set(range(500))  # exactly the first 500, last batch wrapped around
    assert list(seen[500:]) == list(range(12))
    small = calibration_batches(images[:100], 32)
    assert set(np.concatenate(small).ravel()) == set(range(100)) and len(small) == 4
    assert [b.shape[0] for b in calibration_batches(images[:5], 32)] == [5]


def test_without_tensorrt_or_gpu_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(BackendUnavailableError, match="install the trt extra.*us3l bench --device") as info:
        get_exporter("trt").check_available("fp32")
    assert "\n" not in str(info.value)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.3.0"))
    if not torch.cuda.is_available():
        with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
            get_exporter("trt").check_available("fp32")


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    torch.manual_seed(0)
    net = get_model("us_resnet_mini").eval()
    calibrate_bn(net, [torch.randn(16, 3, 16, 16)], 0.5)
    path = tmp_path_factory.mktemp("trt") / "mini.onnx"
    get_exporter("onnx").export(ExportRequest(slice_to_width(net, 0.5), path, (3, 16, 16)))
    return path


def _request(tmp_path, onnx_file, precision, **kw):
    return ExportRequest(static=torch.nn.Identity(), path=tmp_path / "m.engine", input_shape=(3, 16, 16),
                         precision=precision, onnx_path=onnx_file,
                         options={"workspace_mib": 256, "max_batch": 16, "opt_batch": 4,
                                  "timing_cache": str(tmp_path / "t.cache")}, **kw)


def test_trt10_builder_calls_and_raw_plan(tmp_path, fake_gpu, onnx_file):
    trt = fake_gpu("10.3.0.26")
    (tmp_path / "t.cache").write_bytes(b"old")
    facts = get_exporter("trt").export(_request(tmp_path, onnx_file, "fp16"))
    assert (tmp_path / "m.engine").read_bytes() == PLAN  # raw plan, nothing prepended
    calls = trt.calls
    assert ("network", 0) in calls and ("pool", "WORKSPACE", 256 << 20) in calls
    assert ("flag", "FP16") in calls and ("flag", "INT8") not in calls
    assert ("profile", "input", (1, 3, 16, 16), (4, 3, 16, 16), (16, 3, 16, 16)) in calls
    assert ("timing_cache_in", b"old") in calls and (tmp_path / "t.cache").read_bytes() == b"cache<old>"
    assert ("parse", onnx_file.read_bytes()) in calls  # TRT <= 10 parses the fp32 ONNX unchanged
    assert facts["tensorrt"] == "10.3.0.26" and facts["gpu"] == "Fake Orin" and facts["compute_capability"] == "8.7"
    assert facts["builder_flags"] == ["FP16"] and not facts["strongly_typed"]


def test_trt8_uses_explicit_batch_flag(tmp_path, fake_gpu, onnx_file):
    trt = fake_gpu("8.5.2.2")
    get_exporter("trt").export(_request(tmp_path, onnx_file, "fp32", batch=2))
    assert ("network", 1) in trt.calls
    assert ("profile", "input", (2, 3, 16, 16), (2, 3, 16, 16), (2, 3, 16, 16)) in trt.calls


def test_trt11_strongly_typed_fp16_converts_the_onnx(tmp_path, fake_gpu, onnx_file):
    import onnx

    trt = fake_gpu("11.4.0.106")
    facts = get_exporter("trt").export(_request(tmp_path, onnx_file, "fp16"))
    parsed = onnx.load_from_string(next(c[1] for c in trt.calls if c[0] == "parse"))
    conv_weights = {n.input[1] for n in parsed.graph.node if n.op_type == "Conv"}
    assert all(i.data_type == onnx.TensorProto.FLOAT16 for i in parsed.graph.initializer if i.name in conv_weights)
    assert not [c for c in trt.calls if c[0] == "flag"] and facts["strongly_typed"]
    assert facts["precision_tool"].startswith(("onnxruntime.transformers.float16", "modelopt-autocast"))
    assert not list(tmp_path.glob("*.fp16.onnx"))  # the converted temp ONNX is removed
    with pytest.raises(BackendUnavailableError, match=r"nvidia-modelopt\[onnx\]"):
        get_exporter("trt").export(_request(tmp_path, onnx_file, "int8", calib_images=np.zeros((4, 3, 16, 16), np.float32)))


def test_float16_conversion_runs_in_onnxruntime(onnx_file):
    import onnx

    from us3l.exporters.onnx_exporter import ort_session

    model = onnx.load(str(onnx_file))
    half, tool = to_fp16(model)  # ONNX Runtime's converter here (no ModelOpt)
    assert tool.startswith("onnxruntime.transformers.float16")
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    a = ort_session(model.SerializeToString()).run(None, {"input": x})[0]
    b = ort_session(half.SerializeToString()).run(None, {"input": x})[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() <= 1e-2 * max(1.0, np.abs(a).max())
    assert np.abs(a).max() > 1e-3  # a meaningful comparison, not two near-zero outputs


@pytest.mark.parametrize("n_images,expected", [(600, 500), (100, 80)])  # a fifth of a small set is held out
def test_pipeline_int8_on_trt10_calibrates_on_real_images(tmp_path, fake_gpu, monkeypatch, n_images, expected):
    trt = fake_gpu("10.3.0.26")
    seen = {}

    def fake_calibrator(trt_mod, batches, cache_path):
        seen["batches"] = batches
        return "calibrator"

    monkeypatch.setattr(trt_build, "make_calibrator", fake_calibrator)
    # Stand-in for running the engine: the parity gate runs the ONNX the engine was built from in ORT.
    onnx_runner = get_exporter("onnx").runner
    monkeypatch.setattr(trt_exporter.TrtExporter, "runner",
                        lambda self, path, req: onnx_runner(req.onnx_path, req))
    data = tmp_path / "calib.npy"
    np.save(data, np.random.default_rng(0).standard_normal((n_images, 3, 16, 16)).astype(np.float32))
    out = tmp_path / "out"
    res = run_export(ExportConfig(arch="us_resnet_mini", widths="0.5", format="trt", precision="int8",
                              calib_data=str(data), out_dir=str(out)))
    art = res.artifacts[0]
    assert art.path.read_bytes() == PLAN and art.source.name == "us_resnet_mini_w0.5.onnx" and art.source.exists()
    assert ("build", "calibrator") in trt.calls and ("flag", "INT8") in trt.calls
    assert len(set(np.concatenate(seen["batches"]).reshape(len(np.concatenate(seen["batches"])), -1)[:, 0])) == expected
    side = json.loads(art.sidecar.read_text())
    assert side["format_info"]["tensorrt"] == "10.3.0.26" and side["format_info"]["gpu"] == "Fake Orin"
    assert side["precision"] == "int8" and side["source_onnx"] == "us_resnet_mini_w0.5.onnx"
    assert (out / "us_resnet_mini.timing.cache").read_bytes().startswith(b"cache<")


def test_engines_from_another_trt_or_gpu_are_refused(fake_gpu):
    fake_gpu("10.3.0.26")
    side = {"artifact": "m.engine", "source_onnx": "m.onnx",
            "format_info": {"tensorrt": "10.3.0.26", "compute_capability": "8.7", "gpu": "Fake Orin"}}
    trt_exporter.check_engine_compatible(side)
    with pytest.raises(BackendUnavailableError, match="rebuild it here from m.onnx"):
        trt_exporter.check_engine_compatible({**side, "format_info": {**side["format_info"], "tensorrt": "8.5.2.2"}})
    with pytest.raises(BackendUnavailableError, match="compute capability 7.2"):
        trt_exporter.check_engine_compatible({**side, "format_info": {**side["format_info"], "compute_capability": "7.2"}})
