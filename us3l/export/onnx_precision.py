"""Precision conversion of an ONNX graph, for strongly typed TensorRT (>= 11) builds.

- FP16: NVIDIA ModelOpt AutoCast (``modelopt.onnx.autocast.convert_to_f16``, I/O kept float32)
  when installed, else :func:`float16_convert`, a small converter for the plain CNN graphs this
  project exports (float initializers and Constant tensors cast to float16, a Cast after the input
  and before each output, so callers still feed and receive float32).
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


def float16_convert(model: Any) -> Any:
    """Convert a float32 ONNX model to float16 compute with float32 inputs and outputs.

    Args:
        model: an ``onnx.ModelProto`` (not modified).

    Returns:
        A new model: float initializers / Constant values in float16, ``Cast`` nodes at the I/O.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    limit = float(np.finfo(np.float16).max)
    for i, init in enumerate(g.initializer):
        if init.data_type == TensorProto.FLOAT:
            arr = np.clip(numpy_helper.to_array(init), -limit, limit).astype(np.float16)
            g.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
    for node in g.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT:
                arr = numpy_helper.to_array(attr.t).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(arr, attr.t.name))
    init_names = {i.name for i in g.initializer}
    casts = []
    for inp in g.input:
        if inp.name in init_names or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = inp.name + "_fp16"
        for node in g.node:
            node.input[:] = [half if n == inp.name else n for n in node.input]
        casts.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16, name=f"cast_{inp.name}_fp16"))
    tail = []
    for out in g.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = out.name + "_fp16"
        for node in g.node:
            node.output[:] = [half if n == out.name else n for n in node.output]
        tail.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT, name=f"cast_{out.name}_fp32"))
    nodes = casts + list(g.node) + tail
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return m


def to_fp16(model: Any) -> tuple[Any, str]:
    """FP16 version of ``model`` and the tool used (``modelopt-autocast`` or ``us3l-float16``)."""
    if has_modelopt():
        from modelopt.onnx.autocast import convert_to_f16

        return convert_to_f16(model, low_precision_type="fp16", keep_io_types=True), "modelopt-autocast"
    return float16_convert(model), "us3l-float16"


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
