"""The parity gate: an exported artifact must reproduce the slimmable PyTorch model.

The reference is the *slimmable* model run under ``use_width(model, w, divisor)`` (not the
static slice), so the gate checks slicing and export together. The criterion is relative to the
output's scale: the artifact passes when ``max |out - ref| <= atol + rtol * max |ref|``. (Feature
vectors have many near-zero entries after ReLU/pooling, where a per-element relative error is
meaningless, while absolute float32 noise grows with the feature scale.) The record also states
the *minimum required tolerance* (Polygraphy's idea): the smallest ``atol`` that would pass with
``rtol=0`` and the smallest ``rtol`` that would pass with ``atol=0``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from us3l.core.errors import ParityError
from us3l.core.precision import PLANS

#: Default tolerances per precision (atol, rtol), from :data:`us3l.core.precision.PLANS` (reasons there).
DEFAULT_TOLERANCE = {p.value: plan.tolerance for p, plan in PLANS.items()}


@dataclass(frozen=True)
class ParityRecord:
    """Outcome of one parity check (stored in the sidecar under ``parity``)."""

    runtime: str
    inputs: str
    num_images: int
    max_abs_err: float
    mean_abs_err: float
    max_rel_err: float
    output_scale: float
    min_required_atol: float
    min_required_rtol: float
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(reference: np.ndarray, output: np.ndarray, atol: float, rtol: float, runtime: str,
            inputs: str) -> ParityRecord:
    """Compare an artifact's output with the PyTorch reference.

    Raises:
        ParityError: the shapes differ.
    """
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise ParityError(f"{runtime} output has shape {out.shape}, PyTorch gives {ref.shape}")
    diff = np.abs(out - ref)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    finite = bool(np.isfinite(out).all())
    max_abs = float(diff.max()) if diff.size and finite else float("inf")
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    passed = finite and max_abs <= atol + rtol * scale
    return ParityRecord(runtime=runtime, inputs=inputs, num_images=int(ref.shape[0]) if ref.ndim else 1,
                        max_abs_err=max_abs, mean_abs_err=float(diff.mean()) if diff.size and finite else float("inf"),
                        max_rel_err=max_rel, output_scale=scale, min_required_atol=max_abs, min_required_rtol=max_rel,
                        atol=float(atol), rtol=float(rtol), passed=passed)


def enforce(record: ParityRecord, what: str) -> None:
    """Raise :class:`ParityError` when ``record`` did not pass, naming the tolerance that would.

    Args:
        record: the comparison.
        what: the artifact being checked (e.g. ``"onnx w=0.35"``).
    """
    if record.passed:
        return
    raise ParityError(
        f"{what} does not match PyTorch within atol={record.atol:g}, rtol={record.rtol:g} "
        f"({record.runtime}, {record.num_images} {record.inputs} images): max abs err {record.max_abs_err:.3g}, "
        f"mean {record.mean_abs_err:.3g}; minimum required tolerance atol={record.min_required_atol:.3g} "
        f"(rtol=0) or rtol={record.min_required_rtol:.3g} (atol=0); nothing was written"
    )
