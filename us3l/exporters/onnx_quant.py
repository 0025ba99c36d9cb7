"""Reduced-precision ONNX: INT8 static quantization and FP16 conversion with ONNX Runtime's tools,
the accuracy gate that replaces max-abs parity for them, and TensorRT INT8 inputs derived from
the same calibration.

- **INT8** (:func:`quantize_int8`): ``onnxruntime.quantization.quantize_static`` in QDQ format,
  per-channel symmetric int8 weights, uint8 (asymmetric) activations, calibrated on real images.
  U8S8 is ONNX Runtime's fast path on x86 without VNNI: measured on this 2-core AVX2 CPU,
  ``us_resnet18_cifar`` width 1.0 ran 1.8x faster than FP32 with U8S8, while symmetric S8S8 ran
  *slower* than FP32. The activation ranges are saved beside the artifact (ONNX Runtime's
  calibration-cache JSON, ``*.ranges.json``) so TensorRT inputs can be derived without the images:
  a symmetric S8S8 Q/DQ graph for TensorRT >= 11 (:func:`qdq_for_tensorrt`) and a calibration
  cache for ``trtexec --calib`` on TensorRT <= 10 (:func:`tensorrt_calibration_cache`).
- **Calibration method**: :data:`DEFAULT_CALIBRATION` (see its comment for the measurement).
- **FP16** (:func:`to_fp16`): ``onnxruntime.transformers.float16.convert_float_to_float16`` with
  ``keep_io_types=True`` (callers still feed and receive float32).
- **Gate** (:func:`accuracy_gate`): cosine similarity of the artifact's features to the FP32
  PyTorch reference on held-out images (images not used for calibration); with a classifier head
  also top-1 agreement. Max-abs error is recorded but not gated on: quantization error is large in
  absolute terms yet harmless when the feature direction (what kNN and linear probes use) is kept.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from us3l.core.errors import BackendUnavailableError, ExportError, ParityError
from us3l.core.precision import PLANS

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# MinMax is the default. Measured with perf/precision.py --calib on a digits SSL checkpoint
# (us_resnet_mini, 500 calibration images, kNN on the 360-image digits test split, where one image
# is 0.28 points), mean kNN over widths 0.25/0.5/0.75/1.0: MinMax 0.913, Percentile (99.999 %)
# 0.916, Entropy (2048 bins) 0.912 -- equal within one or two test images; calibration took
# 0.3-1.9 s (MinMax), 0.9-2.3 s (Percentile) and 22-40 s (Entropy) per width. MinMax is as
# accurate here, the fastest, needs no tuning and keeps the rare large post-ReLU activations.
DEFAULT_CALIBRATION = "minmax"
#: Gate thresholds on the mean cosine similarity to FP32 outputs, from :data:`us3l.core.precision.PLANS`.
DEFAULT_MIN_COSINE = {p.value: plan.min_cosine for p, plan in PLANS.items() if plan.min_cosine is not None}
RANGES_SUFFIX = ".ranges.json"


def _quantization() -> Any:
    try:
        from onnxruntime import quantization
    except ImportError:
        raise BackendUnavailableError("INT8 ONNX needs onnxruntime's quantization tools; pip install onnxruntime") from None
    if "calibration_cache_path" not in inspect.signature(quantization.quantize_static).parameters:
        raise BackendUnavailableError("this onnxruntime cannot save calibration ranges (no calibration_cache_path); "
                                      "upgrade it: pip install -U onnxruntime")
    return quantization


def _method(q: Any, name: str) -> Any:
    if name not in CALIBRATION_METHODS:
        raise ExportError(f"calibration method {name!r} is invalid; valid: {', '.join(CALIBRATION_METHODS)}")
    return {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
            "percentile": q.CalibrationMethod.Percentile}[name]


def _reader(q: Any, images: np.ndarray, input_name: str, batch: int, progress: Any = None) -> Any:
    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.i >= len(images):
                return None
            chunk = np.ascontiguousarray(images[self.i:self.i + batch], dtype=np.float32)
            self.i += batch
            if progress is not None:
                progress.update(min(self.i, len(images)))
            return {input_name: chunk}

    return Reader()


def quantize_int8(onnx_path: Path, images: np.ndarray, out_path: Path, ranges_path: Path,
                  method: str = DEFAULT_CALIBRATION, input_name: str = "input", batch: int | None = 32,
                  exclude: list[str] | tuple[str, ...] = (), reuse_ranges: bool = False) -> dict[str, Any]:
    """Write a static INT8 (QDQ, per-channel weights) copy of ``onnx_path`` calibrated on ``images``.

    Args:
        onnx_path: the FP32 ONNX artifact.
        images: float32 NCHW calibration images (normalised like the training data).
        out_path / ranges_path: the INT8 ONNX and the activation ranges (JSON) to write.
        method: ``minmax`` | ``entropy`` | ``percentile``.
        input_name: graph input name.
        batch: calibration batch (the model's fixed batch when it has one).
        exclude: node names kept in FP32 (not quantized).
        reuse_ranges: ``ranges_path`` already holds this model's ranges for ``method`` (no calibration run).

    Returns:
        Facts for the sidecar (tool, format, types, method, images used, time).

    Raises:
        ExportError: no images or a bad method. BackendUnavailableError: onnxruntime too old/missing.
    """
    import time

    q = _quantization()
    if len(images) == 0:
        raise ExportError("INT8 calibration needs at least one image")
    calib = _method(q, method)
    start = time.perf_counter()
    from us3l.core.heartbeat import stage

    with _quiet_root():
        if not reuse_ranges:
            with stage("INT8 calibration", total=len(images), unit="images") as progress:
                _calibrate(q, onnx_path, images, calib, input_name, batch or len(images), Path(ranges_path), progress)
        with stage("INT8 quantization"):
            q.quantize_static(str(onnx_path), str(out_path), None,  # ranges come from the file just written
                              quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, calibrate_method=calib,
                              nodes_to_exclude=list(exclude) or None,
                              extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                              calibration_cache_path=str(ranges_path))
    from .onnx_graph import recheck_file

    recheck_file(out_path, "int8 Q/DQ ONNX for TensorRT")
    return {"tool": f"onnxruntime.quantization {_ort_version()}", "format": "QDQ", "weights": "int8 symmetric per-channel",
            "activations": "uint8 asymmetric per-tensor", "method": method, "images": int(len(images)),
            "seconds": round(time.perf_counter() - start, 3), "ranges_file": Path(ranges_path).name,
            **({"kept_fp32": list(exclude)} if exclude else {})}


# ONNX Runtime's histogram defaults give Entropy 128 bins for 128 quantized bins, which leaves the
# KL search a single candidate: the full range, i.e. exactly MinMax (measured: identical files).
# 2048 bins (as TensorRT's entropy calibrator) make it a real search.
HISTOGRAM_OPTIONS: dict[str, dict[str, Any]] = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128},
                     "percentile": {"num_bins": 2048, "percentile": 99.999}}


def _calibrate(q: Any, onnx_path: Path, images: np.ndarray, method: Any, input_name: str, batch: int,
               ranges_path: Path, progress: Any = None) -> None:
    """Activation ranges of every tensor the quantizer touches, saved in ONNX Runtime's format."""
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    name = {q.CalibrationMethod.Entropy: "entropy", q.CalibrationMethod.Percentile: "percentile"}.get(method)
    with tempfile.TemporaryDirectory(prefix="us3l-calib-") as tmp:
        calibrator = create_calibrator(Path(onnx_path), list(set(QLinearOpsRegistry) | set(QDQRegistry)),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"), calibrate_method=method,
                                       extra_options=dict(HISTOGRAM_OPTIONS.get(name or "", {})))
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            calibrator.collect_data(_reader(q, images, input_name, batch, progress))
            data = calibrator.compute_data()
        save_tensors_data(data, ranges_path)


class _quiet_root:
    """ONNX Runtime's quantizer logs 'consider pre-processing' warnings on the root logger; hide them."""

    def __enter__(self) -> None:
        self.level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().setLevel(self.level)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def read_ranges(ranges_path: Path) -> dict[str, tuple[float, float]]:
    """``{tensor name: (lowest, highest)}`` from a ranges file written by :func:`quantize_int8`.

    Raises:
        ExportError: unreadable file.
    """
    q = _quantization()
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        data = load_tensors_data(Path(ranges_path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"calibration ranges {ranges_path} are unreadable ({exc})") from None
    del q
    out = {}
    for name in data:
        td = data[name]
        lo, hi = td.range_value
        out[name] = (float(np.asarray(lo).min()), float(np.asarray(hi).max()))
    return out


def ranges_method(ranges_path: Path) -> str:
    """The calibration method a ranges file was computed with (``minmax``...)."""
    import json

    raw = json.loads(Path(ranges_path).read_text())
    value = str(raw.get("calibration_method", "")).lower()
    for name in CALIBRATION_METHODS:
        if name in value:
            return name
    raise ExportError(f"calibration ranges {ranges_path} do not record a known method ({value!r})")


def qdq_for_tensorrt(onnx_path: Path, ranges_path: Path, out_path: Path) -> dict[str, Any]:
    """A symmetric S8S8 Q/DQ graph (what TensorRT's explicit quantization accepts: int8, zero points 0,
    float biases)
    from the FP32 ONNX and the stored ranges; no images needed.

    Returns:
        Facts (tool, types, method).
    """
    q = _quantization()
    method = ranges_method(ranges_path)
    with _quiet_root():
        q.quantize_static(str(onnx_path), str(out_path), None, quant_format=q.QuantFormat.QDQ, per_channel=True,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=_method(q, method),
                          extra_options={"WeightSymmetric": True, "ActivationSymmetric": True,
                                         "QuantizeBias": False},  # TensorRT keeps biases in float
                          calibration_cache_path=str(ranges_path))
    return {"tool": f"onnxruntime.quantization {_ort_version()}", "format": "QDQ", "weights": "int8 symmetric per-channel",
            "activations": "int8 symmetric per-tensor", "method": method}


def trt_version_tag(version: tuple[int, ...]) -> int:
    """The integer TensorRT writes in headers: 8.6.1 -> 8601, 10.3.0 -> 100300 (inverse of
    :func:`us3l.benchmarks.trtexec.decode_version_tag`)."""
    major, minor, patch = (tuple(version) + (0, 0, 0))[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def tensorrt_calibration_cache(ranges_path: Path, version: tuple[int, ...]) -> bytes:
    """A TensorRT INT8 calibration cache (``trtexec --calib=FILE``) from stored activation ranges.

    Format: a header line ``TRT-<version tag>-EntropyCalibration2``, then one line per tensor
    ``name: <scale>`` with the scale ``max(|lo|, |hi|) / 127`` written as the hex of its big-endian
    IEEE float32 bits (TensorRT's symmetric INT8 scale). Tensor names are the ONNX tensor names,
    which the TensorRT ONNX parser keeps.
    """
    lines = [f"TRT-{trt_version_tag(version)}-EntropyCalibration2"]
    for name, (lo, hi) in sorted(read_ranges(ranges_path).items()):
        amax = max(abs(lo), abs(hi))
        scale = amax / 127.0 if amax > 0 else 1.0 / 127.0
        lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
    return ("\n".join(lines) + "\n").encode()


def to_fp16(model: Any) -> Any:
    """FP16 copy of an ``onnx.ModelProto`` with float32 inputs and outputs (ONNX Runtime's converter)."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        raise BackendUnavailableError("FP16 ONNX needs onnxruntime's float16 converter; pip install onnxruntime") from None
    with _quiet_root():
        return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


def fp16_tool() -> str:
    return f"onnxruntime.transformers.float16 {_ort_version()}"


@dataclass(frozen=True)
class GateRecord:
    """Outcome of the accuracy gate of a reduced-precision artifact (the sidecar's ``parity``)."""

    gate: str
    runtime: str
    inputs: str
    num_images: int
    mean_cosine: float
    min_cosine: float
    min_cosine_required: float
    top1_agreement: float | None
    max_abs_err: float
    mean_abs_err: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def accuracy_gate(reference: np.ndarray, output: np.ndarray, min_cosine: float, runtime: str, inputs: str,
                  logits: bool = False) -> GateRecord:
    """Compare reduced-precision outputs with the FP32 reference on held-out images.

    Passes when the mean cosine similarity of the output vectors is at least ``min_cosine``.

    Raises:
        ParityError: the shapes differ.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(output, dtype=np.float64).reshape(len(output), -1)
    if ref.shape != out.shape:
        raise ParityError(f"{runtime} output has shape {out.shape}, PyTorch gives {ref.shape}")
    finite = bool(np.isfinite(out).all())
    num = (ref * out).sum(1)
    den = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(np.abs(ref).sum(1) == np.abs(out).sum(1), 1.0, 0.0))
    if not finite:
        cos = np.zeros(len(ref))
    diff = np.abs(out - ref)
    agree = float((ref.argmax(1) == out.argmax(1)).mean()) if logits else None
    mean_cos = float(cos.mean())
    return GateRecord(gate="cosine", runtime=runtime, inputs=inputs, num_images=int(len(ref)), mean_cosine=mean_cos,
                      min_cosine=float(cos.min()), min_cosine_required=float(min_cosine), top1_agreement=agree,
                      max_abs_err=float(diff.max()) if finite else float("inf"),
                      mean_abs_err=float(diff.mean()) if finite else float("inf"), passed=finite and mean_cos >= min_cosine)


def enforce_gate(record: GateRecord, what: str) -> None:
    """Raise :class:`ParityError` when the gate failed, naming the threshold that would pass."""
    if record.passed:
        return
    raise ParityError(f"{what} keeps too little of the FP32 features: mean cosine {record.mean_cosine:.4f} < "
                      f"{record.min_cosine_required:g} on {record.num_images} held-out {record.inputs} images "
                      f"({record.runtime}); lower --min-cosine to accept it, or calibrate on more/other images; "
                      f"nothing was written")


def temp_path(suffix: str) -> Path:
    """A fresh temporary file path (the caller removes it)."""
    fd, name = tempfile.mkstemp(suffix=suffix)
    import os

    os.close(fd)
    return Path(name)
