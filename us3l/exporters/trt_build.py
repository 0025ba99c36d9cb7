"""TensorRT engine building: version branches, shapes, calibration and the builder calls.

Pure logic (:func:`precision_plan`, :func:`profile_shapes`, :func:`calibration_batches`,
:func:`network_flags`) takes plain values or the ``tensorrt`` module as an argument, so it is
tested without TensorRT (with a stand-in module). The builder calls follow the TensorRT Python
API: ``Builder`` → ``create_network`` → ``OnnxParser.parse`` → ``IBuilderConfig`` with
``set_memory_pool_limit(MemoryPoolType.WORKSPACE, …)``, one optimization profile for the batch
range, a timing cache (loaded, reused, saved) and precision handling per version (docs/deployment.md §2):

- TensorRT <= 10: ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` with an ``IInt8EntropyCalibrator2``
  on real images (+ ``set_calibration_profile`` for the dynamic batch).
- TensorRT >= 11: networks are always strongly typed; precision is baked into the ONNX first
  (FP16: float16 conversion; INT8: ModelOpt Q/DQ) and no precision flag exists.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError, ConfigError, ExportError
from us3l.core.precision import Precision

log = logging.getLogger(__name__)

MODELOPT_HINT = "pip install 'nvidia-modelopt[onnx]'"


def trt_version(trt: Any) -> tuple[int, ...]:
    """``trt.__version__`` as a tuple of ints (``"10.3.0.26"`` -> ``(10, 3, 0, 26)``)."""
    parts = []
    for p in str(getattr(trt, "__version__", "0")).split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts) or (0,)


@dataclass(frozen=True)
class PrecisionPlan:
    """How one precision is obtained on one TensorRT major version.

    Attributes:
        strongly_typed: the network is strongly typed (TensorRT >= 11).
        builder_flags: ``BuilderFlag`` names to set (TensorRT <= 10).
        calibrator: attach an INT8 entropy calibrator (TensorRT <= 10, INT8).
        onnx_conversion: ``None``, ``"fp16"`` or ``"int8-qdq"``: convert the ONNX before parsing.
    """

    strongly_typed: bool
    builder_flags: tuple[str, ...]
    calibrator: bool
    onnx_conversion: str | None


def precision_plan(major: int, precision: str | Precision, has_modelopt: bool) -> PrecisionPlan:
    """Choose the precision path for TensorRT ``major`` from :class:`us3l.core.precision.PrecisionPlan`.

    INT8 on TensorRT <= 10 also enables FP16 so layers TensorRT does not quantize run in half
    precision (as ``trtexec --int8 --fp16``).

    Raises:
        BackendUnavailableError: INT8 on TensorRT >= 11 without ModelOpt.
        ExportError: unknown precision.
    """
    try:
        plan = Precision.parse(precision).plan  # the per-precision facts (us3l.core.precision)
    except ConfigError as exc:
        raise ExportError(str(exc)) from None
    if major <= 10:
        return PrecisionPlan(False, plan.trt_builder_flags, plan.calibrated, None)
    if plan.trt_onnx == "int8-qdq" and not has_modelopt:
        raise BackendUnavailableError(
            f"INT8 on TensorRT >= 11 needs explicit Q/DQ nodes in the ONNX (no calibrator API any more): {MODELOPT_HINT}"
        )
    return PrecisionPlan(True, (), False, plan.trt_onnx)


def profile_shapes(input_shape: tuple[int, int, int], batch: int | None, opt_batch: int = 1,
                   max_batch: int = 32) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) input shapes of the optimization profile.

    A fixed ``batch`` gives one shape; a dynamic batch covers ``1..max_batch`` tuned at ``opt_batch``.

    Raises:
        ExportError: ``opt_batch``/``max_batch`` inconsistent.
    """
    if batch:
        shape = (int(batch), *input_shape)
        return shape, shape, shape
    if max_batch < 1 or not 1 <= opt_batch <= max_batch:
        raise ExportError(f"TensorRT batch range invalid: opt {opt_batch}, max {max_batch}; valid: 1 <= opt <= max")
    return (1, *input_shape), (int(opt_batch), *input_shape), (int(max_batch), *input_shape)


def calibration_batches(images: np.ndarray, batch_size: int, num_images: int = 500) -> list[np.ndarray]:
    """Split INT8 calibration images into equal batches.

    Takes the first ``num_images`` images (NVIDIA recommends >= 500), or the whole set when it is
    smaller. The calibrator needs a constant batch size, so the last batch is completed by wrapping
    around to the first images (every selected image is seen at least once).

    Raises:
        ExportError: no images.
    """
    n = min(int(num_images), len(images))
    if n <= 0:
        raise ExportError("INT8 calibration needs at least one image")
    chosen = np.ascontiguousarray(images[:n], dtype=np.float32)
    bs = max(1, min(int(batch_size), n))
    batches = []
    for i in range(0, n, bs):
        chunk = chosen[i:i + bs]
        if len(chunk) < bs:
            chunk = np.concatenate([chunk, chosen[: bs - len(chunk)]])
        batches.append(np.ascontiguousarray(chunk))
    return batches


def network_flags(trt: Any, major: int) -> int:
    """``create_network`` flags: explicit batch before TensorRT 10 (implicit there; strongly typed from 11)."""
    if major < 10:
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def make_calibrator(trt: Any, batches: list[np.ndarray], cache_path: Path | None) -> Any:
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from GPU memory (torch CUDA tensors).

    The calibration cache is read from / written to ``cache_path`` when given.
    """
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches, self.index = batches, 0
            self.device = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= len(self.batches):
                return None
            self.device.copy_(torch.from_numpy(self.batches[self.index]))
            self.index += 1
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache_path.read_bytes() if cache_path and cache_path.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            if cache_path:
                cache_path.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(trt: Any, onnx_path: Path, plan: PrecisionPlan, shapes: tuple, input_name: str,
                 workspace_mib: int, timing_cache: Path | None, calib: list[np.ndarray] | None,
                 calib_cache: Path | None = None) -> bytes:
    """Parse ``onnx_path`` and build a serialized engine (the raw plan bytes).

    Raises:
        ExportError: the parser or the builder failed (first parser errors quoted).
    """
    major = trt_version(trt)[0]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
        raise ExportError(f"TensorRT could not parse {Path(onnx_path).name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    if plan.calibrator:
        if not calib:
            raise ExportError("INT8 calibration needs images; pass --calib-data")
        config.int8_calibrator = make_calibrator(trt, calib, calib_cache)
        cal_profile = builder.create_optimization_profile()
        shape = tuple(calib[0].shape)
        cal_profile.set_shape(input_name, shape, shape, shape)
        config.set_calibration_profile(cal_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)
    start = time.perf_counter()
    log.info("Building TensorRT %s engine from %s", ".".join(map(str, trt_version(trt)[:3])), Path(onnx_path).name)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {Path(onnx_path).name} (see the TensorRT log)")
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("TensorRT engine built in %.1fs", time.perf_counter() - start)
    return bytes(serialized)
