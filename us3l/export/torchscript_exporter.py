"""TorchScript exporter: ``torch.jit.trace`` of the static network, saved with ``torch.jit.save``.

For PyTorch-only deployments (LibTorch, mobile). Metadata goes into the archive's ``extra_files``
(``us3l.json``); the pipeline writes the usual sidecar too.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .onnx_exporter import batched_runner
from .registry import Exporter, ExportRequest, register_exporter

log = logging.getLogger(__name__)


@register_exporter("torchscript")
class TorchScriptExporter(Exporter):
    """Plain static network → traced TorchScript archive (``.pt``)."""

    suffix = ".pt"
    precisions = ("fp32",)

    def export(self, req: ExportRequest) -> dict[str, Any]:
        start = time.perf_counter()
        log.info("Tracing TorchScript -> %s", req.path.name)
        example = torch.zeros((req.batch or 2, *req.input_shape))
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(req.static, example)
        req.path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(req.path), _extra_files={"us3l.json": json.dumps(req.metadata, sort_keys=True)})
        log.info("TorchScript written in %.2fs", time.perf_counter() - start)
        return {"traced": True}

    def runner(self, path: Path, req: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
        module = torch.jit.load(str(path), map_location="cpu").eval()

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()

        return batched_runner(run, req.batch)
