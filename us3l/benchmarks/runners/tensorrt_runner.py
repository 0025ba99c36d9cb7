"""TensorRT runner through the local Python API (built on this machine, timed on a CUDA stream).

TensorRT and torch's CUDA allocator are imported lazily; without them activation raises
:class:`BackendUnavailableError`. Engines are built here from the ONNX artifact (engines are not
portable, docs/deployment.md §3). TRT <= 10 uses builder precision flags; TRT >= 11 is always strongly
typed, so fp16/int8 must already be in the ONNX (export with ``--precision``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError, ConfigError, ExportError
from us3l.core.precision import Precision

from .base import LocalRunner, RunnerOptions
from .registry import register_runner

log = logging.getLogger(__name__)


def import_tensorrt() -> Any:
    """Import the TensorRT Python bindings or raise :class:`BackendUnavailableError`."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(
            "TensorRT Python bindings are not installed; pip install 'us3l-deploy[tensorrt]' "
            "(on Jetson use JetPack's system python3-libnvinfer), or use --runner trtexec") from None
    return tensorrt


def trt_major(version: str) -> int:
    """Major version from ``tensorrt.__version__`` (``"10.3.0"`` -> 10)."""
    return int(str(version).split(".")[0])


def builder_precision_flags(precision: str, major: int) -> list[str]:
    """Names of ``trt.BuilderFlag`` members to set for ``precision`` on TensorRT ``major``.

    Raises:
        ConfigError: unknown precision, or int8 without a Q/DQ graph on the Python API.
    """
    plan = Precision.parse(precision).plan
    if major >= 11 or not plan.trt_builder_flags:
        return []  # strongly typed: precision comes from the ONNX itself
    if plan.calibrated:
        raise ConfigError("int8 on the tensorrt runner needs a calibrated Q/DQ ONNX; use --runner trtexec "
                          "for latency-only INT8 (random scales) on TensorRT <= 10")
    return list(plan.trt_builder_flags)


@register_runner("tensorrt")
class TensorRTRunner(LocalRunner):
    """Builds an engine from the ONNX artifact with one optimisation profile (batch 1..max) and
    times ``execute_async_v3`` followed by a stream synchronise."""

    @classmethod
    def check_available(cls, options: RunnerOptions) -> None:
        import_tensorrt()

    def _activate(self) -> None:
        trt = import_tensorrt()
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a core dependency
            raise BackendUnavailableError("torch is needed for CUDA buffers") from None
        if not torch.cuda.is_available():
            raise BackendUnavailableError("the tensorrt runner needs a CUDA GPU; none is visible here")
        self._trt, self._torch = trt, torch
        major = trt_major(trt.__version__)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(self.artifact.path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"TensorRT could not parse {self.artifact.path}: {errors}")
        config = builder.create_builder_config()
        for flag in builder_precision_flags(self.options.precision, major):
            config.set_flag(getattr(trt.BuilderFlag, flag))
        max_batch = int(self.options.extra.get("max_batch", 1))
        profile = builder.create_optimization_profile()
        self._specs = {}
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            rest = tuple(int(d) for d in inp.shape[1:])
            profile.set_shape(inp.name, (1, *rest), (max_batch, *rest), (max_batch, *rest))
            self._specs[inp.name] = ((None, *rest), np.dtype(trt.nptype(inp.dtype)))
        config.add_optimization_profile(profile)
        log.info("building TensorRT %s engine for width %s", trt.__version__, self.artifact.width)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"TensorRT failed to build an engine from {self.artifact.path}")
        self._engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._buffers: dict[int, dict[str, Any]] = {}

    def _deactivate(self) -> None:
        self._context = self._engine = None
        self._buffers = {}
        self._feeds.clear()

    def input_specs(self) -> dict[str, tuple[tuple[int | None, ...], np.dtype]]:
        return self._specs

    def _to_native(self, feed: dict[str, np.ndarray]) -> Any:
        torch, trt, ctx = self._torch, self._trt, self._context
        batch = next(iter(feed.values())).shape[0]
        bufs: dict[str, Any] = {}
        for name, arr in feed.items():
            ctx.set_input_shape(name, tuple(arr.shape))
            bufs[name] = torch.from_numpy(arr).cuda()
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            if self._engine.get_tensor_mode(name) == trt.TensorIOMode.OUTPUT:
                shape = tuple(ctx.get_tensor_shape(name))
                dtype = torch.from_numpy(np.zeros(1, dtype=trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
                bufs[name] = torch.empty(shape, dtype=dtype, device="cuda")
        self._buffers[batch] = bufs
        return batch

    def _infer(self, native_feed: Any) -> Any:
        ctx, bufs = self._context, self._buffers[native_feed]
        for name, tensor in bufs.items():
            if name in self._specs:
                ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        ctx.execute_async_v3(self._stream.cuda_stream)
        self._stream.synchronize()
        return bufs
