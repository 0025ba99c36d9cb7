"""TensorRT exporter: builds an engine from the ONNX artifact of the same width.

The engine file is the raw serialized plan (``trtexec --loadEngine`` and
``deserialize_cuda_engine`` read it as is); provenance lives only in the sidecar: GPU name,
compute capability and TensorRT version, because engines are not portable across GPUs or
TensorRT versions (docs/deployment.md §3). Building needs ``tensorrt`` and a CUDA GPU visible to
PyTorch (device buffers for INT8 calibration and the parity run are torch CUDA tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError, ExportError
from us3l.core.precision import Precision

from .onnx_exporter import batched_runner
from .onnx_precision import has_modelopt, quantize_int8_qdq, to_fp16
from .registry import Exporter, ExportRequest, register_exporter
from .trt_build import build_engine, calibration_batches, precision_plan, profile_shapes, trt_version

log = logging.getLogger(__name__)

WHAT_TO_DO = ("install the trt extra on a GPU host (pip install 'us3l-deploy[tensorrt]'), or export ONNX here and build "
              "on the device with 'us3l bench --device <jetson profile>' (trtexec builds the engine there)")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or one :class:`BackendUnavailableError` line saying what to do."""
    try:
        import tensorrt
    except ImportError:
        raise BackendUnavailableError(f"TensorRT is not installed here; {WHAT_TO_DO}") from None
    return tensorrt


def device_info() -> dict[str, Any]:
    """Name and compute capability of the current CUDA GPU.

    Raises:
        BackendUnavailableError: no CUDA GPU visible to PyTorch.
    """
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"TensorRT needs a CUDA GPU (visible to a CUDA build of PyTorch); {WHAT_TO_DO}")
    idx = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(idx)
    return {"gpu": torch.cuda.get_device_name(idx), "compute_capability": f"{major}.{minor}",
            "cuda": torch.version.cuda}


def check_engine_compatible(sidecar: dict[str, Any]) -> None:
    """Refuse an engine whose sidecar records another TensorRT version or GPU architecture.

    Engines are tied to both (docs/deployment.md §3); runners call this before deserializing.

    Raises:
        BackendUnavailableError: TensorRT/GPU missing here, or the engine was built elsewhere.
    """
    info = sidecar.get("format_info") or {}
    here_trt = ".".join(map(str, trt_version(import_tensorrt())[:3]))
    here = device_info()
    built_trt = ".".join(str(info.get("tensorrt", "?")).split(".")[:3])
    if built_trt != here_trt or info.get("compute_capability") != here["compute_capability"]:
        raise BackendUnavailableError(
            f"engine {sidecar.get('artifact')} was built with TensorRT {built_trt} for compute capability "
            f"{info.get('compute_capability')} ({info.get('gpu')}); this host has TensorRT {here_trt} on {here['gpu']} "
            f"({here['compute_capability']}): rebuild it here from {sidecar.get('source_onnx') or 'its ONNX'}"
        )


def engine_runner(trt: Any, plan: bytes, input_name: str, chunk: int) -> Callable[[np.ndarray], np.ndarray]:
    """Run a serialized engine on float32 NCHW batches (name-based I/O API, TensorRT >= 8.5)."""
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise ExportError("TensorRT could not deserialize the engine it just built")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    output = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def run(x: np.ndarray) -> np.ndarray:
        inp = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        context.set_input_shape(input_name, tuple(inp.shape))
        context.set_tensor_address(input_name, int(inp.data_ptr()))
        out = torch.empty(tuple(context.get_tensor_shape(output)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(output, int(out.data_ptr()))
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise ExportError("TensorRT inference failed during the parity check")
        stream.synchronize()
        return out.cpu().numpy()

    return batched_runner(run, chunk)


@register_exporter("trt")
class TrtExporter(Exporter):
    """ONNX artifact → TensorRT engine (``.engine``), FP32 / FP16 / INT8.

    Options (``ExportRequest.options``): ``workspace_mib`` (default 1024), ``opt_batch`` (1),
    ``max_batch`` (32) for the dynamic-batch profile, ``timing_cache`` (path; loaded if present,
    saved after the build and reused by the next width).
    """

    suffix = ".engine"
    needs_onnx = True
    precisions = tuple(Precision)

    def check_available(self, precision: str) -> None:
        trt = import_tensorrt()
        device_info()
        precision_plan(trt_version(trt)[0], precision, has_modelopt())

    def export(self, req: ExportRequest) -> dict[str, Any]:
        import onnx

        trt = import_tensorrt()
        info = device_info()
        version = trt_version(trt)
        plan = precision_plan(version[0], req.precision, has_modelopt())
        if req.onnx_path is None:
            raise ExportError("the TensorRT exporter needs the ONNX artifact of this width")
        onnx_path, tool = Path(req.onnx_path), None
        converted = req.path.with_name(req.path.stem + f".{req.precision}.onnx")
        calibrated = Precision.parse(req.precision).plan.calibrated
        if plan.onnx_conversion is not None and not calibrated:  # FP16 graph
            from .onnx_graph import checked_bytes

            model16, tool = to_fp16(onnx.load(str(onnx_path)))
            converted.write_bytes(checked_bytes(model16, "fp16 ONNX for TensorRT"))
            onnx_path = converted
        elif plan.onnx_conversion is not None:  # INT8: explicit Q/DQ
            if req.calib_images is None:
                raise ExportError("INT8 needs calibration images; pass --calib-data")
            tool = quantize_int8_qdq(onnx_path, req.calib_images[: req.options.get("int8_images", 500)], converted)
            from .onnx_graph import recheck_file

            recheck_file(converted, "int8 Q/DQ ONNX for TensorRT")
            onnx_path = converted
        opts = req.options
        shapes = profile_shapes(req.input_shape, req.batch, int(opts.get("opt_batch", 1)), int(opts.get("max_batch", 32)))
        calib = None
        if plan.calibrator:
            if req.calib_images is None:
                raise ExportError("INT8 calibration needs images; pass --calib-data")
            calib = calibration_batches(req.calib_images, req.batch or min(32, shapes[2][0]), len(req.calib_images))
        cache = Path(opts["timing_cache"]) if opts.get("timing_cache") else None
        try:
            engine = build_engine(trt, onnx_path, plan, shapes, req.input_name, int(opts.get("workspace_mib", 1024)),
                                  cache, calib)
        finally:
            converted.unlink(missing_ok=True)
        req.path.write_bytes(engine)  # the raw plan: never prepend metadata (docs/deployment.md §3)
        return {"runtime": "tensorrt", "tensorrt": ".".join(map(str, version)), **info,
                "strongly_typed": plan.strongly_typed, "builder_flags": list(plan.builder_flags),
                "precision_tool": tool,
                "int8": None if not calibrated else
                ("calibrator: IInt8EntropyCalibrator2 on real images" if plan.calibrator else "qdq: explicit Q/DQ ONNX"),
                "profile": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]},
                "workspace_mib": int(opts.get("workspace_mib", 1024)),
                "calibration": {"images": int(sum(len(b) for b in calib)), "batch": int(len(calib[0])),
                                "algorithm": "entropy2"} if calib else None}

    def runner(self, path: Path, req: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
        trt = import_tensorrt()
        chunk = req.batch or int(req.options.get("max_batch", 32))
        return engine_runner(trt, Path(path).read_bytes(), req.input_name, chunk)
