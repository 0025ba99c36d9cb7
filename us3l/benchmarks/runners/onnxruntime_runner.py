"""ONNX Runtime runner: CPU EP, or (``device="cuda"``) the TensorRT and CUDA EPs when the installed
build has them (``extra["ort_tensorrt"] = False`` skips the TensorRT EP).

It measures whatever ONNX it is given: FP32, FP16 (float16 compute, float32 I/O) or INT8 QDQ
artifacts from ``us3l export --precision``; the precision is the artifact's."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError, ConfigError
from us3l.core.precision import Precision

from .base import LocalRunner, RunnerOptions
from .registry import register_runner

log = logging.getLogger(__name__)

_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}


def import_onnxruntime() -> Any:
    """Import onnxruntime lazily or raise :class:`BackendUnavailableError` naming the install."""
    from us3l.exporters.ort import import_onnxruntime as load

    return load()


def providers_for(device: str, available: list[str], precision: str = "fp32",
                  use_tensorrt: bool = False) -> list[Any]:
    """The execution-provider list for ``device`` given the providers this build offers.

    Raises:
        BackendUnavailableError: ``cuda`` requested but this onnxruntime build has no CUDA EP.
        ConfigError: unknown device.
    """
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        from us3l.exporters.ort import installed_distributions, provider_problem

        problem = provider_problem(device, available, installed_distributions())
        if problem:
            raise BackendUnavailableError(problem)
        chain: list[Any] = []
        if use_tensorrt and "TensorrtExecutionProvider" in available:
            chain.append(("TensorrtExecutionProvider", {"trt_fp16_enable": precision == Precision.FP16,
                                                        "trt_engine_cache_enable": True}))
        # EXHAUSTIVE conv search (the default) makes first runs very slow (ORT #19838).
        chain.append(("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
        chain.append("CPUExecutionProvider")
        return chain
    raise ConfigError(f"onnxruntime runner device {device!r} is invalid; valid: cpu, cuda")


def make_session(path: str, device: str = "cpu", threads: int | None = None, precision: str = "fp32",
                 use_tensorrt: bool = False) -> Any:
    """An ``InferenceSession`` with full graph optimisation, ``threads`` intra-op threads, 1 inter-op."""
    ort = import_onnxruntime()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    providers = providers_for(device, ort.get_available_providers(), precision, use_tensorrt)
    return ort.InferenceSession(path, sess_options=so, providers=providers)


@register_runner("onnxruntime")
class OnnxRuntimeRunner(LocalRunner):
    """Times ``InferenceSession.run`` on the artifact's ONNX file (outputs land on the host,
    so the device is synchronised inside the timed call).

    Examples:
        >>> # with OnnxRuntimeRunner(artifact, RunnerOptions(threads=2)) as r:
        >>> #     times = r.measure(1, TimingConfig(duration_s=0.2))
    """

    @classmethod
    def check_available(cls, options: RunnerOptions) -> None:
        Precision.parse(options.precision)
        ort = import_onnxruntime()
        providers_for(options.device, ort.get_available_providers(), options.precision)

    def _activate(self) -> None:
        if self.artifact.path is None:
            raise ConfigError("the onnxruntime runner needs an ONNX artifact")
        opts = self.options
        self._sess = make_session(str(self.artifact.path), opts.device, opts.threads, opts.precision,
                                  bool(opts.extra.get("ort_tensorrt", True)))
        self._specs = {}
        for inp in self._sess.get_inputs():
            dtype = _ORT_DTYPES.get(inp.type)
            if dtype is None:
                raise ConfigError(f"input {inp.name!r} has unsupported type {inp.type}")
            shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
            self._specs[inp.name] = (shape, np.dtype(dtype))

    def _deactivate(self) -> None:
        self._sess = None
        self._feeds.clear()

    @property
    def session(self) -> Any:
        """The live ``InferenceSession`` (for comparisons such as the harness-overhead script)."""
        return self._sess

    def input_specs(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        return self._specs

    def _to_native(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed

    def _infer(self, native_feed: dict[str, np.ndarray]) -> Any:
        return self._sess.run(None, native_feed)
