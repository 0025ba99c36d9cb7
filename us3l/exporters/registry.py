"""Exporter registry: ``register_exporter(name)``, ``get_exporter(name)``, ``list_exporters()``.

One small class per format, keyed by the format name (``onnx``, ``trt``, ``pt2``).
An exporter turns a plain static network (from :func:`us3l.core.slicing.slice_to_width`) into
one file and can run that file for the parity gate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from us3l.core.precision import Precision
from us3l.core.registry import Registry


@dataclass
class ExportRequest:
    """Everything one exporter call needs (built by the pipeline for one width).

    Attributes:
        static: the plain network at this width (eval mode, no slimmable layers).
        path: where to write the artifact (a staging path; the pipeline renames it later).
        input_shape: ``(C, H, W)`` of one image.
        batch: fixed batch size, or None for a dynamic batch axis.
        opset: ONNX opset.
        precision: ``fp32`` | ``fp16`` | ``int8``.
        input_name / output_name: graph I/O names.
        metadata: string key/values stored inside the artifact where the format allows it.
        simplify: run the graph simplifier (ONNX).
        onnx_path: the ONNX artifact this artifact is built from (TensorRT), else None.
        calib_images: float32 NCHW images for INT8 calibration (TensorRT), else None.
        options: format-specific options (``workspace_mib``, ``max_batch``, ``timing_cache``...).
    """

    static: nn.Module
    path: Path
    input_shape: tuple[int, int, int]
    batch: int | None = None
    opset: int = 17
    precision: Precision = Precision.FP32
    input_name: str = "input"
    output_name: str = "features"
    output_names: tuple[str, ...] = ()  # several named outputs (--outputs stages); else output_name
    metadata: dict[str, str] = field(default_factory=dict)
    simplify: bool = True
    onnx_path: Path | None = None
    calib_images: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Exporter(ABC):
    """Base class of format exporters.

    Class attributes:
        name: registry key (set by :func:`register_exporter`).
        suffix: file suffix including the dot.
        needs_onnx: the format is built from the ONNX artifact (the pipeline provides it).
        precisions: precisions this format can produce.
    """

    name: str = ""
    suffix: str = ""
    needs_onnx: bool = False
    precisions: tuple[Precision, ...] = (Precision.FP32,)

    def check_available(self, precision: str) -> None:
        """Raise :class:`~us3l.core.errors.BackendUnavailableError` early if this format cannot run here."""

    @abstractmethod
    def export(self, req: ExportRequest) -> dict[str, Any]:
        """Write the artifact to ``req.path``.

        Returns:
            Extra JSON-like facts for the sidecar (versions, device, graph summary...).
        """

    @abstractmethod
    def runner(self, path: Path, req: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
        """A function running the written artifact on a float32 NCHW batch (for the parity gate)."""


def _load_builtin() -> None:
    # Importing the format modules registers them; they import their heavy backends lazily.
    from . import onnx_exporter, pt2_exporter, trt_exporter  # noqa: F401


_EXPORTERS: Registry[type[Exporter]] = Registry("export format", _load_builtin)


def register_exporter(name: str) -> Callable[[type[Exporter]], type[Exporter]]:
    """Class decorator registering an :class:`Exporter` under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return _EXPORTERS.register(name)


def list_exporters() -> list[str]:
    """Sorted names of the registered formats."""
    return _EXPORTERS.names()


def get_exporter(name: str) -> Exporter:
    """A fresh exporter instance for format ``name``.

    Raises:
        UnknownNameError: unknown format (the message lists the valid ones).

    Examples:
        >>> get_exporter("onnx").suffix
        '.onnx'
    """
    return _EXPORTERS.get(name)()
