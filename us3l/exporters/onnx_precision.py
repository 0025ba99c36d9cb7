"""Precision conversion of an ONNX graph, for strongly typed TensorRT (>= 11) builds.

- FP16: NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_f16``, I/O kept float32)
  when installed, else ONNX Runtime's converter (:func:`us3l.exporters.onnx_quant.to_fp16`,
  ``keep_io_types=True``, so callers still feed and receive float32).
- INT8: explicit Q/DQ nodes from ModelOpt's ONNX PTQ (``modelopt.onnx.quantization.quantize``,
  entropy calibration on real images); without ModelOpt a clear error names the package.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError

from .trt_build import MODELOPT_HINT

log = logging.getLogger(__name__)


def has_modelopt() -> bool:
    """Whether ``modelopt.onnx`` can be imported."""
    try:
        return importlib.util.find_spec("modelopt") is not None and importlib.util.find_spec("modelopt.onnx") is not None
    except (ImportError, ValueError):
        return False


def to_fp16(model: Any) -> tuple[Any, str]:
    """FP16 version of ``model`` and the tool used (``modelopt-autocast`` or ONNX Runtime's converter)."""
    if has_modelopt():
        from modelopt.onnx.autocast import convert_to_f16

        return convert_to_f16(model, low_precision_type="fp16", keep_io_types=True), "modelopt-autocast"
    from .onnx_quant import fp16_tool
    from .onnx_quant import to_fp16 as ort_fp16

    return ort_fp16(model), fp16_tool()


def quantize_int8_qdq(onnx_path: Path, calib: np.ndarray, out_path: Path) -> str:
    """Write an INT8 Q/DQ copy of ``onnx_path`` to ``out_path`` with ModelOpt (entropy calibration).

    Raises:
        BackendUnavailableError: ModelOpt is not installed.
    """
    if not has_modelopt():
        raise BackendUnavailableError(f"INT8 on TensorRT >= 11 needs ModelOpt's Q/DQ quantizer: {MODELOPT_HINT}")
    from modelopt.onnx.quantization import quantize

    log.info("Inserting INT8 Q/DQ with ModelOpt (%d calibration images)", len(calib))
    quantize(str(onnx_path), quantize_mode="int8", calibration_data=np.ascontiguousarray(calib, dtype=np.float32),
             calibration_method="entropy", output_path=str(out_path))
    return "modelopt-qdq"
