"""``torch.export`` exporter: an ``ExportedProgram`` saved as ``.pt2``.

For PyTorch-side deployments (AOTInductor, ExecuTorch, or ``torch.export.load`` in Python). It
replaces the TorchScript format, which torch marks deprecated. The static slice is captured once
with a dynamic batch dimension (or the fixed ``--batch``); the tool's metadata travels inside the
archive as ``extra_files["us3l.json"]`` and in the usual sidecar.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from us3l.core.errors import ExportError
from us3l.core.precision import Precision

from .onnx_exporter import batched_runner
from .registry import Exporter, ExportRequest, register_exporter

log = logging.getLogger(__name__)


@register_exporter("pt2")
class ExportedProgramExporter(Exporter):
    """Plain static network → ``torch.export`` ExportedProgram archive (``.pt2``)."""

    suffix = ".pt2"
    precisions = (Precision.FP32,)

    def export(self, req: ExportRequest) -> dict[str, Any]:
        start = time.perf_counter()
        log.info("torch.export -> %s", req.path.name)
        example = torch.zeros((req.batch or 2, *req.input_shape))
        shapes = None if req.batch else ({0: torch.export.Dim("batch", min=1, max=4096)},)
        try:
            with torch.no_grad():
                program = torch.export.export(req.static, (example,), dynamic_shapes=shapes, strict=False)
        except Exception as exc:  # torch raises many types; surface one line
            raise ExportError(f"torch.export failed: {str(exc).splitlines()[0][:200]}") from exc
        req.path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, str(req.path), extra_files={"us3l.json": json.dumps(req.metadata, sort_keys=True)})
        log.info("ExportedProgram written in %.2fs", time.perf_counter() - start)
        return {"program": {"nodes": len(program.graph.nodes), "dynamic_batch": req.batch is None}}

    def runner(self, path: Path, req: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
        module = torch.export.load(str(path)).module()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

        return batched_runner(run, req.batch)
