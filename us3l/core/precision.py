"""One precision vocabulary: :class:`Precision` and what each precision means along the pipeline.

Every room speaks of precisions through this module: the CLI (choices shown in ``--help``), the
exporters (which alone convert FP32 to FP16/INT8), the benchmarks (which measure the converted
files) and the accuracy tables. A :class:`PrecisionPlan` holds the per-precision facts that
used to be spelled out where they were used: the parity tolerance or the cosine gate, whether
the artifact is converted from the FP32 ONNX of the same width and whether that conversion is
calibrated on images, and how TensorRT obtains the precision on each version
(:func:`us3l.exporters.trt_build.precision_plan` builds on it):

- TensorRT <= 10 builds from the FP32 ONNX with builder flags (``BuilderFlag.FP16``, INT8 with
  FP16 so unquantised layers run in half precision, as ``trtexec --int8 --fp16``); INT8 takes a
  calibrator (or a calibration cache derived from the export's ranges).
- TensorRT >= 11 networks are strongly typed: the precision is in the ONNX (an FP16 graph, or
  explicit INT8 Q/DQ nodes) and no flag exists.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError


class Precision(enum.StrEnum):
    """Numeric precision of an artifact. A ``str``: ``Precision.INT8 == "int8"``, JSON writes ``"int8"``."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str | Precision, what: str = "precision") -> Precision:
        """``"INT8"`` / ``" int8 "`` / ``Precision.INT8`` -> ``Precision.INT8``.

        Raises:
            ConfigError: not a precision (one line naming the valid ones).
        """
        if isinstance(value, Precision):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"{what} {value!r} is invalid; valid: {', '.join(PRECISIONS)}") from None

    @classmethod
    def parse_list(cls, value: str | Iterable[str | Precision], what: str = "--precision") -> tuple[Precision, ...]:
        """``"fp32,int8"`` (or a sequence) -> ``(FP32, INT8)``, in order, without repeats.

        Raises:
            ConfigError: empty, or an item that is not a precision.
        """
        items = str(value).split(",") if isinstance(value, str) else [str(v) for v in value]
        items = [p.strip() for p in items if p.strip()]
        bad = [p for p in items if p.lower() not in PRECISIONS]
        if bad or not items:
            raise ConfigError(f"{what} {value if isinstance(value, str) else ','.join(items)!r} is invalid; valid: "
                              f"{', '.join(PRECISIONS)} or a list such as fp32,int8")
        return tuple(dict.fromkeys(cls(p.lower()) for p in items))

    @property
    def plan(self) -> PrecisionPlan:
        """What this precision means along the pipeline."""
        return PLANS[self]

    @property
    def reduced(self) -> bool:
        """Below FP32: converted from the FP32 artifact and gated on cosine similarity."""
        return self is not Precision.FP32


#: The precision names, most faithful first (for messages, docs and option choices).
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
#: Precisions one width-switchable file can hold (INT8 calibrates each width on its own).
SWITCHABLE_PRECISIONS: tuple[Precision, ...] = (Precision.FP32, Precision.FP16)


@dataclass(frozen=True)
class PrecisionPlan:
    """Per-precision facts shared by exporters, benchmarks and reports.

    Attributes:
        precision: the precision described.
        rank: 0 = most faithful (FP32); orders tables and breaks ties between pairs without accuracy.
        tolerance: default elementwise parity tolerance ``(atol, rtol)`` against PyTorch.
        min_cosine: default mean cosine similarity to FP32 outputs the reduced-precision gate demands
            (``None``: FP32, gated elementwise).
        converted: the artifact is converted from the FP32 ONNX of the same width (by the exporters).
        calibrated: the conversion is calibrated on real images (INT8 activation ranges).
        trt_builder_flags: ``BuilderFlag`` names on TensorRT <= 10 (built from the FP32 ONNX).
        trt_onnx: what the ONNX must already be on strongly typed TensorRT >= 11 (``None``: FP32 as
            exported, ``"fp16"``: an FP16 graph, ``"int8-qdq"``: explicit INT8 Q/DQ nodes).
    """

    precision: Precision
    rank: int
    tolerance: tuple[float, float]
    min_cosine: float | None
    converted: bool
    calibrated: bool
    trt_builder_flags: tuple[str, ...]
    trt_onnx: str | None

    @property
    def trtexec_flags(self) -> tuple[str, ...]:
        """``trtexec`` precision flags on TensorRT <= 10 (none on >= 11: strongly typed)."""
        return tuple(f"--{flag.lower()}" for flag in sorted(self.trt_builder_flags, key=("INT8", "FP16").index))


# Tolerances (atol, rtol): FP32 graphs differ from PyTorch only by summation order and BN folding,
# ~1e-6 on unit-scale features, up to ~2e-4 on deep untrained ResNet-50 features (scale ~3) where
# folding multiplies near-dead channels by up to 1/sqrt(eps); reduced precisions get looser ones.
# Cosine gates (mean over held-out images, artifact vs FP32 outputs): INT8 measured 0.976-0.997 on
# the networks here (a barely trained digits net at 8 px lowest); a broken quantisation (wrong
# ranges, saturated activations) falls far below 0.95.
PLANS: dict[Precision, PrecisionPlan] = {
    Precision.FP32: PrecisionPlan(Precision.FP32, 0, (1e-4, 1e-4), None, False, False, (), None),
    Precision.FP16: PrecisionPlan(Precision.FP16, 1, (1e-2, 1e-2), 0.999, True, False, ("FP16",), "fp16"),
    Precision.INT8: PrecisionPlan(Precision.INT8, 2, (1e-1, 1e-1), 0.95, True, True, ("FP16", "INT8"), "int8-qdq"),
}


def precision_plan(precision: str | Precision) -> PrecisionPlan:
    """The :class:`PrecisionPlan` of ``precision`` (a name or a :class:`Precision`).

    Raises:
        ConfigError: not a precision.
    """
    return Precision.parse(precision).plan


def precision_rank(precision: str | Precision | None) -> int:
    """Sort key: FP32 first, then FP16, INT8; anything else last (``None`` is FP32)."""
    try:
        return Precision.parse(precision or Precision.FP32).plan.rank
    except ConfigError:
        return len(PLANS)
