"""Exporters: slice a universally slimmable checkpoint to any width and write deployable files.

Stable API (used by ``us3l export`` and by ``us3l.bench``)::

    from us3l.exporters import ExportConfig, run_export

    result = run_export(ExportConfig(checkpoint="ckpt.pt", widths="0.25:1.0:0.05", format="onnx", out_dir="out"))
    for art in result.artifacts:            # one per distinct channel configuration
        art.path, art.sidecar, art.width, art.aliases, art.macs, art.parity["max_abs_err"]
    result.for_width(0.35).path            # the file serving a width (directly or as an alias)

- :class:`ExportConfig` (frozen): source (``checkpoint`` or ``arch``), ``widths``, ``format``
  (``onnx`` | ``trt`` | ``pt2``), ``out_dir``, ``batch`` (None = dynamic), ``opset``
  (default 17), ``snap`` (8/16/32), ``precision`` (fp32/fp16/int8), ``calib_data``, tolerances,
  ``include_head``, ``image_size``, ``force`` and TensorRT build options.
- :func:`run_export` → :class:`ExportResult` (``artifacts: list[Artifact]``, ``out_dir``, ``seconds``).
- :class:`Artifact`: ``path``, ``sidecar``, ``width``, ``aliases``, ``format``, ``precision``,
  ``channels``, ``macs``, ``params``, ``feature_dim``, ``input_shape``, ``parity``, ``sha256``,
  ``cached``, ``untrained``, ``source`` (the ONNX an engine was built from).
- Registry: :func:`register_exporter`, :func:`get_exporter`, :func:`list_exporters`;
  exporters subclass :class:`Exporter` and receive an :class:`ExportRequest`.
- Reference checkpoints: :func:`import_reference` (``us3l import``).

Every artifact ``NAME_w0.35.onnx`` has a sidecar ``NAME_w0.35.json`` (width, aliases, channels,
MACs, params, input shape and normalisation, precision, parity record, checkpoint hash,
versions, build time, untrained flag, cache key). Heavy backends (onnx, onnxruntime, onnxsim,
tensorrt, modelopt) are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from us3l.core.lazy import lazy_getattr

if TYPE_CHECKING:
    from .artifacts import Artifact, ExportResult
    from .pipeline import ExportConfig, run_export
    from .reference import ImportConfig, import_reference
    from .registry import Exporter, ExportRequest, get_exporter, list_exporters, register_exporter

# Names resolve lazily, so the light modules of this room (``us3l.exporters.ort``, the sidecar
# readers) can be imported without torch.
_EXPORTS = {
    "Artifact": "artifacts",
    "ExportResult": "artifacts",
    "ExportConfig": "pipeline",
    "run_export": "pipeline",
    "ImportConfig": "reference",
    "import_reference": "reference",
    "Exporter": "registry",
    "ExportRequest": "registry",
    "get_exporter": "registry",
    "list_exporters": "registry",
    "register_exporter": "registry",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
