"""ONNX exporter: one self-contained ``.onnx`` file per width.

Choices (DEPLOY-NOTES §7, §8):

- **Exporter: the TorchScript-based ("legacy") exporter** (``torch.onnx.export(dynamo=False)``)
  by default. It always writes a single self-contained file (weights inline, no ``.onnx.data``
  sidecar), takes 0.2–1 s for ResNet-18 instead of 3–9 s for the dynamo exporter (a 16-width
  ladder must finish in a minute on 2 cores) and folds BN into Conv. Its graph for our plain
  Conv/BN/ReLU/Add/pool/Gemm networks is what every TensorRT parser accepts. ``exporter="dynamo"``
  (option) uses the torch.export-based exporter with ``external_data=False`` so the file stays
  self-contained; use it if a future torch removes the legacy path.
- **Default opset 17** (:data:`DEFAULT_OPSET`): see its comment.
- **onnxsim** simplification (shape inference + constant folding) after export, then
  ``onnx.checker.check_model(full_check=True)``; the pipeline's parity gate runs the file in ONNX
  Runtime against the slimmable PyTorch model.
- ``metadata_props`` carry width, architecture, checkpoint hash and tool version.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from us3l.core.errors import BackendUnavailableError, ExportError

from .registry import Exporter, ExportRequest, register_exporter

log = logging.getLogger(__name__)

# Opset 17 is the newest opset understood by the TensorRT 8.5 ONNX parser shipped with JetPack 5.1
# (ONNX 1.12 era; TensorRT 8.5 support matrix) and is well inside what TensorRT 10.3 (JetPack 6,
# parser opsets 9..20) and TensorRT 11 (9..25) accept, so one file builds on every current Jetson
# and desktop TensorRT. Newer opsets buy nothing here: the graph only uses Conv, Relu/Clip, Add,
# GlobalAveragePool, Flatten and Gemm, unchanged since opset 13. torch 2.13's dynamo default
# (opset 20) would be rejected by JetPack 5's parser.
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 21
ONNX_EXPORTERS = ("torchscript", "dynamo")


def _require(module: str, extra: str = "") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailableError(
            f"python package {module!r} is not installed; install it with 'pip install {extra or module}'"
        ) from None


def torch_to_onnx_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool,
                        input_name: str = "input", output_name: str = "features",
                        exporter: str = "torchscript") -> bytes:
    """Serialise a plain module to ONNX bytes (single file, weights inline).

    Args:
        model: a static network in eval mode.
        example: an example input (its batch size is irrelevant when ``dynamic_batch``).
        opset: target opset.
        dynamic_batch: name axis 0 ``batch`` on input and output.
        input_name / output_name: graph I/O names.
        exporter: ``torchscript`` (default, fast, always single-file) or ``dynamo``.

    Raises:
        ExportError: torch could not export the module.
    """
    if exporter not in ONNX_EXPORTERS:
        raise ExportError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(ONNX_EXPORTERS)}")
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            if exporter == "torchscript":
                axes = {input_name: {0: "batch"}, output_name: {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset, do_constant_folding=True,
                                  input_names=[input_name], output_names=[output_name], dynamic_axes=axes)
                return buf.getvalue()
            shapes = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, external_data=False,
                                        input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=shapes, verbose=False)
            return program.model_proto.SerializeToString()
        except Exception as exc:  # torch raises many types; surface one line
            raise ExportError(f"torch.onnx.export ({exporter}) failed: {str(exc).splitlines()[0][:200]}") from exc


def simplify_onnx(model: Any) -> Any:
    """Run onnxsim (shape inference, constant folding, fusions); dynamic axes are kept.

    Raises:
        ExportError: onnxsim reported that the simplified model differs.
    """
    onnxsim = _require("onnxsim")
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ExportError("onnxsim produced a model that failed its own check; export with simplify=False")
    return simplified


def graph_summary(model: Any) -> dict[str, Any]:
    """Op-type counts, initializer count and opset of an ONNX model (for the sidecar)."""
    ops = Counter(n.op_type for n in model.graph.node)
    return {"ops": dict(sorted(ops.items())), "initializers": len(model.graph.initializer),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "ir_version": int(model.ir_version)}


def ort_session(path_or_bytes: Path | bytes, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session (``threads=0``: ORT's default)."""
    ort = _require("onnxruntime")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def batched_runner(run_batch: Callable[[np.ndarray], np.ndarray], batch: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a batch runner so any number of images runs through a fixed-batch artifact (pads the last chunk)."""
    if not batch:
        return run_batch

    def run(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            outs.append(run_batch(np.ascontiguousarray(chunk))[:n])
        return np.concatenate(outs)

    return run


@register_exporter("onnx")
class OnnxExporter(Exporter):
    """Plain static network → simplified, checked, self-contained ONNX file.

    Options (``ExportRequest.options``): ``exporter`` (``torchscript`` | ``dynamo``).

    Examples:
        >>> from pathlib import Path
        >>> from us3l.core.models import get_model
        >>> from us3l.core.slicing import slice_to_width
        >>> static = slice_to_width(get_model("us_resnet_mini").eval(), 0.5)
        >>> req = ExportRequest(static, Path("/tmp/mini_w0.5.onnx"), (3, 16, 16))
        >>> facts = OnnxExporter().export(req)
    """

    suffix = ".onnx"
    precisions = ("fp32", "fp16", "int8")

    def check_available(self, precision: str) -> None:
        for module in ("onnx", "onnxruntime"):
            _require(module)

    def export(self, req: ExportRequest) -> dict[str, Any]:
        onnx = _require("onnx")
        if req.precision != "fp32":
            return self._reduced(req)
        if not MIN_OPSET <= req.opset <= MAX_OPSET:
            raise ExportError(f"opset {req.opset} is not supported; valid: {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
        exporter = req.options.get("exporter", "torchscript")
        start = time.perf_counter()
        log.info("Exporting ONNX (%s exporter, opset %d) -> %s", exporter, req.opset, req.path.name)
        example = torch.zeros((req.batch or 2, *req.input_shape))
        data = torch_to_onnx_bytes(req.static, example, req.opset, req.batch is None, req.input_name,
                                   req.output_name, exporter)
        model = onnx.load_from_string(data)
        if req.simplify:
            model = simplify_onnx(model)
        onnx.helper.set_model_props(model, {k: str(v) for k, v in req.metadata.items()})
        model.producer_name, model.doc_string = "us3l-deploy", "universally slimmable network sliced to one width"
        data = model.SerializeToString()  # serialise once: checked bytes == written bytes (single file, < 2 GB)
        try:
            onnx.checker.check_model(data, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported ONNX failed onnx.checker: {str(exc).splitlines()[0][:200]}") from None
        req.path.parent.mkdir(parents=True, exist_ok=True)
        req.path.write_bytes(data)
        log.info("ONNX written in %.2fs (%d nodes)", time.perf_counter() - start, len(model.graph.node))
        return {"graph": graph_summary(model), "exporter": exporter, "simplified": bool(req.simplify)}

    def _reduced(self, req: ExportRequest) -> dict[str, Any]:
        """FP16 / INT8 from the FP32 ONNX of the same width (``req.onnx_path``), see :mod:`.onnx_quant`."""
        import onnx

        from .onnx_quant import fp16_tool, quantize_int8, to_fp16

        if req.onnx_path is None:
            raise ExportError(f"{req.precision} ONNX is converted from the FP32 ONNX of the same width; none was given")
        start = time.perf_counter()
        facts: dict[str, Any] = {}
        if req.precision == "fp16":
            model = to_fp16(onnx.load(str(req.onnx_path)))
            facts["precision_tool"] = fp16_tool()
        else:
            if req.calib_images is None:
                raise ExportError("INT8 calibration needs images; pass --calib-data")
            ranges = Path(req.options["ranges_path"])
            facts["calibration"] = quantize_int8(req.onnx_path, req.calib_images, req.path, ranges,
                                                 req.options.get("calibration", "minmax"), req.input_name, req.batch)
            model = onnx.load(str(req.path))
        onnx.helper.set_model_props(model, {**{k: str(v) for k, v in req.metadata.items()}, "us3l.precision": req.precision})
        model.producer_name = "us3l-deploy"
        data = model.SerializeToString()
        if req.precision == "int8":  # the float16 converter appends its input Casts after their users
            try:             # (not topologically sorted for onnx.checker); ONNX Runtime sorts on load and
                onnx.checker.check_model(data, full_check=False)  # the accuracy gate runs the file
            except onnx.checker.ValidationError as exc:
                raise ExportError(f"{req.precision} ONNX failed onnx.checker: {str(exc).splitlines()[0][:200]}") from None
        req.path.write_bytes(data)
        log.info("%s ONNX written in %.2fs", req.precision, time.perf_counter() - start)
        return {**facts, "graph": graph_summary(model)}

    def runner(self, path: Path, req: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
        sess = ort_session(path, threads=1)  # parity needs correctness, not speed; never oversubscribe
        name = sess.get_inputs()[0].name
        return batched_runner(lambda x: sess.run(None, {name: x.astype(np.float32)})[0], req.batch)
