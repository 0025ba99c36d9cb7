"""What ``trtexec`` builds an engine from, per precision and TensorRT version.

The benchmarks' trtexec runner measures; the conversion of an artifact into what a given
TensorRT accepts happens here, in the exporters, following the precision's plan
(:class:`us3l.core.precision.PrecisionPlan`):

- FP32 (any version), FP16 on TensorRT <= 10: the FP32 ONNX, built with the plan's flags.
- FP16 on TensorRT >= 11 (strongly typed): the FP16 ONNX: the exported FP16 artifact, or one
  converted from the FP32 file when only that exists.
- INT8 on TensorRT <= 10: the FP32 ONNX plus a calibration cache derived from the activation
  ranges the export calibrated on real images.
- INT8 on TensorRT >= 11: a symmetric INT8 Q/DQ ONNX derived from the same ranges.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from us3l.core.errors import ConfigError
from us3l.core.precision import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrtexecInput:
    """The files one trtexec build takes.

    Attributes:
        onnx: the ONNX file to build from.
        kind: ``plain`` (the FP32 ONNX), ``half`` (an FP16 graph), ``qdq`` (INT8 Q/DQ graph).
        calibration_cache: INT8 calibration cache for TensorRT <= 10 (``--calib``), else ``None``.
        int8_path: how INT8 reaches the engine (``calibration-cache`` or ``qdq``), else ``None``.
    """

    onnx: Path
    kind: str
    calibration_cache: Path | None = None
    int8_path: str | None = None


def trtexec_input(artifact: Path, precision: str | Precision, version: tuple[int, ...], workdir: Path, *,
                  source: Path | None = None, ranges: Path | None = None, width: float | None = None) -> TrtexecInput:
    """The ONNX (and INT8 calibration cache) trtexec builds ``artifact`` from at ``precision``.

    Args:
        artifact: the exported file (FP32 ONNX, or the FP16/INT8 ONNX converted at export).
        precision / version: the precision asked for and the target's TensorRT version.
        workdir: where converted files are written (the caller removes it).
        source: the FP32 ONNX a reduced-precision artifact was converted from.
        ranges: the INT8 activation ranges file written at export.
        width: for messages.

    Raises:
        ConfigError: INT8 without the export's calibration (ranges and FP32 source).
    """
    p = Precision.parse(precision)
    strongly_typed = version[0] >= 11
    plain = Path(source) if source is not None and p.reduced else Path(artifact)
    if p is Precision.FP32 or (not strongly_typed and not p.plan.calibrated):
        return TrtexecInput(plain, "plain")
    stem = Path(artifact).stem
    if not p.plan.calibrated:  # FP16, strongly typed: the graph itself is FP16
        if source is not None:  # the exported FP16 ONNX (ONNX Runtime's converter)
            return TrtexecInput(Path(artifact), "half")
        import onnx

        from .onnx_precision import to_fp16

        model, tool = to_fp16(onnx.load(str(artifact)))
        log.info("converted width %s to fp16 with %s for strongly typed TensorRT", width, tool)
        from .onnx_graph import checked_bytes

        out = Path(workdir) / f"{stem}_fp16.onnx"
        out.write_bytes(checked_bytes(model, "fp16 ONNX for trtexec"))
        return TrtexecInput(out, "half")
    if ranges is None or source is None or not Path(ranges).is_file():
        raise ConfigError(f"int8 on trtexec needs the artifact's calibration from real images; width {width} "
                          "has none: export it with 'us3l export --precision int8' (or let bench export it)")
    from .onnx_quant import qdq_for_tensorrt, tensorrt_calibration_cache

    if strongly_typed:
        out = Path(workdir) / f"{stem}_int8_qdq.onnx"
        qdq_for_tensorrt(Path(source), Path(ranges), out)
        return TrtexecInput(out, "qdq", int8_path="qdq")
    cache = Path(workdir) / f"{stem}.calib.cache"
    cache.write_bytes(tensorrt_calibration_cache(Path(ranges), version))
    return TrtexecInput(plain, "plain", calibration_cache=cache, int8_path="calibration-cache")
