"""Runner registry, lifecycle, feed validation, timing loop and interleaving (local, CPU)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from us3l.benchmarks.artifacts import BenchArtifact
from us3l.benchmarks.runners import LocalRunner, RunnerOptions, TimingConfig, get_runner, list_runners
from us3l.benchmarks.runners.onnxruntime_runner import providers_for
from us3l.benchmarks.runners.tensorrt_runner import builder_precision_flags
from us3l.benchmarks.stats import compute_stats
from us3l.core.errors import BackendUnavailableError, ConfigError, UnknownNameError, US3LError

FAST = TimingConfig(warmup_ms=10, duration_s=0.05, rounds=1, rewarm_ms=0)


def test_registry_lists_and_rejects_unknown():
    assert {"torch", "onnxruntime", "tensorrt", "trtexec", "onnxruntime-agent"} <= set(list_runners())
    with pytest.raises(UnknownNameError, match=r"unknown runner 'tensorrtt'; valid: .*onnxruntime.*trtexec"):
        get_runner("tensorrtt")


def test_onnxruntime_validates_feed_and_lifecycle(tiny_artifacts):
    runner = get_runner("onnxruntime")(tiny_artifacts[0], RunnerOptions(threads=1))
    with pytest.raises(US3LError, match="not active"):
        runner.infer({})
    with runner as r:
        assert r.is_active
        (shape, dtype), = r.input_specs().values()
        assert shape[0] is None and dtype == np.float32  # dynamic batch
        good = r.make_feed(2)
        out = r.infer(good)
        assert out[0].shape[0] == 2
        name = next(iter(good))
        with pytest.raises(US3LError, match="dtype float64"):
            r.infer({name: good[name].astype(np.float64)})
        with pytest.raises(US3LError, match=r"shape \(2, 3, 16, 16\); the model expects \?x3x32x32"):
            r.infer({name: np.zeros((2, 3, 16, 16), np.float32)})
        with pytest.raises(US3LError, match="do not match the model's inputs"):
            r.infer({"x": good[name]})
    assert not runner.is_active


def test_iterations_mode_is_exact_and_latency_grows_with_width(tiny_artifacts):
    timing = TimingConfig(warmup_ms=10, iterations=12, rounds=3, rewarm_ms=0)
    result = get_runner("onnxruntime").sweep(tiny_artifacts, [1, 2], timing, RunnerOptions(threads=1))
    assert all(len(v) == 12 for v in result.times.values())  # 3 rounds x 4 runs
    assert compute_stats(result.times[(0, 1)]).p50_ms < compute_stats(result.times[(1, 1)]).p50_ms


def test_idle_gap_mode_sleeps_between_runs_outside_timing(tiny_artifacts):
    timing = TimingConfig(warmup_ms=0, iterations=5, rounds=1, rewarm_ms=0, idle_gap_ms=30)
    with get_runner("onnxruntime")(tiny_artifacts[0], RunnerOptions(threads=1)) as r:
        r.measure(1, FAST)  # first-shape warm-up out of the way
        start = time.perf_counter()
        times = r.measure(1, timing)
        elapsed = time.perf_counter() - start
    assert len(times) == 5 and elapsed >= 4 * 0.030  # 4 gaps between 5 runs
    assert sum(times) / 1e3 < elapsed  # gaps are not part of the timed runs


class _Recorder(LocalRunner):
    """A CPU no-op runner recording the order in which widths are measured."""

    def __init__(self, artifact, options=None):
        super().__init__(artifact, options)
        self.log = options.extra["log"]

    def _activate(self):
        pass

    def _deactivate(self):
        pass

    def input_specs(self):
        return {"input": ((None, 3, 4, 4), np.dtype(np.float32))}

    def _to_native(self, feed):
        return feed

    def _infer(self, feed):
        return feed

    def measure(self, batch, timing):
        self.log.append((self.artifact.width, batch))
        return super().measure(batch, timing)


def test_rounds_interleave_and_rotate_across_widths():
    log: list = []
    arts = [BenchArtifact(width=w, path=None, sha256=str(w), input_shape=(1, 3, 4, 4)) for w in (0.25, 0.5, 1.0)]
    timing = TimingConfig(warmup_ms=0, iterations=3, rounds=3, rewarm_ms=0)
    result = _Recorder.sweep(arts, [1], timing, RunnerOptions(extra={"log": log}))
    assert [w for w, _ in log] == [0.25, 0.5, 1.0, 0.5, 1.0, 0.25, 1.0, 0.25, 0.5]
    assert all(len(v) == 3 for v in result.times.values())


def test_torch_runner_measures(tiny_artifacts):
    from us3l.core.models import get_model
    from us3l.core.slicing import slice_to_width

    art = BenchArtifact(width=0.25, path=None, sha256="x", input_shape=(1, 3, 32, 32),
                        build_module=lambda: slice_to_width(get_model("us_resnet18_cifar"), 0.25))
    with get_runner("torch")(art, RunnerOptions(threads=1)) as r:
        times = r.measure(2, FAST)
    assert len(times) >= FAST.min_runs and min(times) > 0
    with pytest.raises(ConfigError, match="only benchmarked on cuda"):
        with get_runner("torch")(art, RunnerOptions(precision="fp16")):
            pass


def test_tensorrt_runner_unavailable_here_is_one_line(tiny_artifacts):
    pytest.importorskip("numpy")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    with pytest.raises(BackendUnavailableError, match=r"us3l-deploy\[tensorrt\]"):
        with get_runner("tensorrt")(tiny_artifacts[0], RunnerOptions(device="cuda")):
            pass


def test_precision_paths_per_trt_version_pure_logic():
    assert builder_precision_flags("fp16", 10) == ["FP16"]
    assert builder_precision_flags("fp16", 11) == []  # strongly typed
    with pytest.raises(ConfigError, match="Q/DQ"):
        builder_precision_flags("int8", 10)


def test_provider_chains():
    assert providers_for("cpu", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
        providers_for("cuda", ["CPUExecutionProvider"])
    chain = providers_for("cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                          "fp16", use_tensorrt=True)
    assert [c[0] if isinstance(c, tuple) else c for c in chain] == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert chain[0][1]["trt_fp16_enable"] is True and chain[1][1]["cudnn_conv_algo_search"] == "HEURISTIC"


def test_timing_config_validation():
    with pytest.raises(ConfigError):
        TimingConfig(duration_s=0)
    with pytest.raises(ConfigError):
        TimingConfig(rounds=0)
    assert TimingConfig(iterations=10, rounds=3).round_iterations() == 4
