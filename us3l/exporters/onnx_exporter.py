"""ONNX exporter: one self-contained ``.onnx`` file per width.

Choices (docs/deployment.md §6, §7):

- **Exporter: torch's dynamo-based exporter** (``torch.onnx.export(dynamo=True)``), the path torch
  supports going forward, with ``external_data=False`` so each file is self-contained (no
  ``.onnx.data``). Its optimizer folds BatchNorm into Conv; the graph of a ResNet is Conv, Relu,
  Add, ReduceMean and Reshape only. It natively writes opset 18 or newer.
- **The opset asked for is the opset written.** Opset 17 (the default: JetPack 5's TensorRT 8.5
  parser stops there) is reached by lowering the opset-18 graph ourselves: the only operators of
  our networks whose schema changed between 17 and 18 are the Reduce* family (``axes`` moved from
  an attribute to an input), which :func:`lower_opset` rewrites. Any other operator that opset
  17 cannot express makes the export fail with one line, never a silently different opset (torch's
  own fallback writes 18 when asked for 17).
- **The legacy TorchScript-based exporter** stays as an explicit, tested fallback
  (``onnx_exporter="torchscript"``; torch marks it deprecated). It is about 2x faster on a
  ladder (measured in perf/export_speed.py) and writes opsets 13..21 natively.
- **onnxsim** simplification (shape inference + constant folding) after export, then
  ``onnx.checker.check_model(full_check=True)``; the pipeline's parity gate runs the file in ONNX
  Runtime against the slimmable PyTorch model.
- **Every file at every precision is valid for any consumer** (:func:`checked_bytes`): nodes in
  topological order (ONNX Runtime's float16 converter appends its input Casts after the Convs that
  read them; ``onnx.reference`` and OpenCV DNN refuse that), then the full checker, before a byte
  is written; Q/DQ files other tools write are re-checked the same way (:func:`recheck_file`).
- ``metadata_props`` carry width, architecture, checkpoint hash and tool version.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from us3l.core.errors import BackendUnavailableError, ExportError
from us3l.core.precision import Precision
from us3l.core.version import __version__

from .onnx_graph import checked_bytes, recheck_file, simplify_onnx, topological_sort  # noqa: F401  (re-exported)
from .registry import Exporter, ExportRequest, register_exporter

log = logging.getLogger(__name__)

# Opset 17 is the newest opset understood by the TensorRT 8.5 ONNX parser shipped with JetPack 5.1
# (ONNX 1.12 era; TensorRT 8.5 support matrix) and is well inside what TensorRT 10.3 (JetPack 6,
# parser opsets 9..20) and TensorRT 11 (9..25) accept, so one file builds on every current Jetson
# and desktop TensorRT. Newer opsets buy nothing here: the graph only uses Conv, Relu/Clip, Add,
# ReduceMean/GlobalAveragePool, Flatten/Reshape and Gemm/MatMul, unchanged since opset 13.
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 21
ONNX_EXPORTERS = ("dynamo", "torchscript")
DEFAULT_EXPORTER = "dynamo"
EXPORTER_ENV = "US3L_ONNX_EXPORTER"  # overrides the default (e.g. "torchscript" on a slow build host)


def default_exporter() -> str:
    """The ONNX exporter used when none is named: ``$US3L_ONNX_EXPORTER``, else ``dynamo``.

    Raises:
        ExportError: the variable names no exporter.
    """
    import os

    name = os.environ.get(EXPORTER_ENV, "").strip() or DEFAULT_EXPORTER
    if name not in ONNX_EXPORTERS:
        raise ExportError(f"{EXPORTER_ENV}={name!r} is not an ONNX exporter; valid: {', '.join(ONNX_EXPORTERS)}")
    return name
DYNAMO_NATIVE_OPSET = 18  # the oldest opset torch's dynamo exporter writes itself
# Operators whose newer versions only widened the accepted types (bfloat16 and the like), so a node
# of the newer version is valid at the older one; Reshape-14 also added ``allowzero``, fine when 0.
_TYPE_ONLY_CHANGES = {"Add": 13, "Sub": 13, "Mul": 13, "Div": 13, "Relu": 13, "Identity": 13, "Reshape": 13}
_REDUCE_OPS = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
               "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def _require(module: str, extra: str = "") -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackendUnavailableError(
            f"python package {module!r} is not installed; install it with 'pip install {extra or module}'"
        ) from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's known, harmless chatter, and nothing else.

    - torch's ONNX registry logs one warning per torchvision operator when torchvision is absent
      (we never use those operators); its logger is raised to ERROR for the duration.
    - torch 2.13's pytree emits ``FutureWarning: isinstance(treespec, LeafSpec) is deprecated``
      from inside torch.export (torch's own call, not ours).
    - The legacy exporter announces its own deprecation; the user chose it explicitly.
    """
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
            yield
    finally:
        registry_log.setLevel(level)


def lower_opset(model: Any, target: int) -> Any:
    """Rewrite an ONNX model to an older default-domain opset, or refuse.

    Reduce* nodes take their constant ``axes`` input back as an attribute (the opset-18 change);
    every other node must have the same schema at ``target`` as at the model's opset, otherwise
    the conversion is refused with the operator's name.

    Raises:
        ExportError: a node cannot be expressed at ``target``.
    """
    import onnx
    from onnx import numpy_helper

    current = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if target >= current:
        return model
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _REDUCE_OPS and target < 18 and not (node.op_type == "ReduceSum" and target >= 13):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if len(node.input) > 1 and node.input[1]:
                if node.input[1] not in consts:
                    raise ExportError(f"cannot write opset {target}: {node.op_type} has computed axes; use --opset 18 or newer")
                attrs["axes"] = [int(a) for a in np.atleast_1d(consts[node.input[1]])]
            if attrs.pop("noop_with_empty_axes", 0) and not attrs.get("axes"):
                raise ExportError(f"cannot write opset {target}: {node.op_type} with noop_with_empty_axes; use --opset 18 or newer")
            del node.input[1:]
            del node.attribute[:]
            node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in sorted(attrs.items()))
            continue
        now = onnx.defs.get_schema(node.op_type, current, node.domain).since_version
        try:
            then = onnx.defs.get_schema(node.op_type, target, node.domain).since_version
        except onnx.defs.SchemaError:  # the operator does not exist yet at the target opset
            then = 0
        if now != then and target >= _TYPE_ONLY_CHANGES.get(node.op_type, current + 1):
            allowzero = [a for a in node.attribute if a.name == "allowzero"]
            shape = consts.get(node.input[1]) if node.op_type == "Reshape" else None
            if allowzero and allowzero[0].i and shape is not None and 0 not in shape.tolist():
                node.attribute.remove(allowzero[0])  # no zero in a constant shape: allowzero changes nothing
            if not any(a.name == "allowzero" and a.i for a in node.attribute):
                continue
        if now != then:
            raise ExportError(f"cannot write opset {target}: operator {node.op_type} changed in opset {now}; "
                              f"use --opset {max(now, DYNAMO_NATIVE_OPSET)} or newer, or --onnx-exporter torchscript")
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for node in [n for n in model.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        model.graph.node.remove(node)  # the axes the Reduce nodes took back
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    del model.graph.value_info[:]  # shapes are re-inferred by the checker / onnxsim
    return model


def torch_to_onnx_bytes(model: torch.nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool,
                        input_name: str = "input", output_name: str | list[str] = "features",
                        exporter: str | None = None) -> bytes:
    """Serialise a plain module to ONNX bytes (single file, weights inline) at exactly ``opset``.

    Args:
        model: a static network in eval mode.
        example: an example input (its batch size is irrelevant when ``dynamic_batch``).
        opset: target opset; the file is written at this opset or the call fails.
        dynamic_batch: name axis 0 ``batch`` on input and output.
        input_name / output_name: graph I/O names (a list for several outputs).
        exporter: ``dynamo`` (default, torch's supported exporter) or ``torchscript`` (legacy, faster).

    Raises:
        ExportError: torch could not export the module, or the opset cannot express it.
    """
    exporter = exporter or default_exporter()
    if exporter not in ONNX_EXPORTERS:
        raise ExportError(f"unknown ONNX exporter {exporter!r}; valid: {', '.join(ONNX_EXPORTERS)}")
    buf = io.BytesIO()
    outputs = [output_name] if isinstance(output_name, str) else list(output_name)
    with _quiet_exporter(), torch.no_grad():
        try:
            if exporter == "torchscript":
                axes = {input_name: {0: "batch"}, **{o: {0: "batch"} for o in outputs}} if dynamic_batch else None
                # the TorchScript exporter writes to a file object too; torch's stub names paths only
                torch.onnx.export(model, (example,), buf, dynamo=False,  # type: ignore[arg-type]
                                  opset_version=opset, do_constant_folding=True,
                                  input_names=[input_name], output_names=outputs, dynamic_axes=axes)
                return buf.getvalue()
            # positional (not keyed by the forward's argument name: nn.Sequential's is "input")
            shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=max(opset, DYNAMO_NATIVE_OPSET),
                                        external_data=False, input_names=[input_name], output_names=outputs,
                                        dynamic_shapes=shapes, verbose=False)
            assert program is not None  # the dynamo exporter always returns its ONNXProgram
            proto = program.model_proto
        except Exception as exc:  # torch raises many types; surface one line
            raise ExportError(f"torch.onnx.export ({exporter}) failed: {str(exc).splitlines()[0][:200]}") from exc
    return lower_opset(proto, opset).SerializeToString()


def graph_summary(model: Any) -> dict[str, Any]:
    """Op-type counts, initializer count and opset of an ONNX model (for the sidecar)."""
    ops = Counter(n.op_type for n in model.graph.node)
    return {"ops": dict(sorted(ops.items())), "initializers": len(model.graph.initializer),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
            "ir_version": int(model.ir_version)}


def ort_session(path_or_bytes: Path | bytes, threads: int = 0) -> Any:
    """An ONNX Runtime CPU session (``threads=0``: ORT's default)."""
    from .ort import import_onnxruntime

    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if not isinstance(path_or_bytes, Path):  # our own export in memory: a failure is ours, not the user's
        return ort.InferenceSession(path_or_bytes, sess_options=opts, providers=["CPUExecutionProvider"])
    try:
        return ort.InferenceSession(str(path_or_bytes), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for a bad file
        raise unreadable_onnx(path_or_bytes, exc) from None


def unreadable_onnx(path: Path, exc: BaseException) -> ExportError:
    """One line for a file ONNX Runtime cannot load: truncated, not ONNX, or an unsupported graph."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", first)  # ORT's code prefix
    try:
        size = f"{path.stat().st_size} bytes, "
    except OSError:
        size = ""
    return ExportError(f"{path} cannot be read as ONNX ({size}{first[:140]}); valid: an .onnx file written by "
                       "'us3l export' (export it again if it was cut short)")


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


def _width_of(req: ExportRequest) -> float:
    try:
        return float(req.metadata.get("us3l.width", "nan"))
    except ValueError:
        return float("nan")


@register_exporter("onnx")
class OnnxExporter(Exporter):
    """Plain static network → simplified, checked, self-contained ONNX file.

    Options (``ExportRequest.options``): ``exporter`` (``dynamo`` | ``torchscript``).

    Examples:
        >>> from pathlib import Path
        >>> from us3l.core.models import get_model
        >>> from us3l.core.slicing import slice_to_width
        >>> static = slice_to_width(get_model("us_resnet_mini").eval(), 0.5)
        >>> req = ExportRequest(static, Path("/tmp/mini_w0.5.onnx"), (3, 16, 16))
        >>> facts = OnnxExporter().export(req)
    """

    suffix = ".onnx"
    precisions = tuple(Precision)

    def check_available(self, precision: str) -> None:
        from .ort import import_onnxruntime

        _require("onnx")
        import_onnxruntime()

    def export(self, req: ExportRequest) -> dict[str, Any]:
        onnx = _require("onnx")
        if Precision.parse(req.precision).plan.converted:
            return self._reduced(req)
        if not MIN_OPSET <= req.opset <= MAX_OPSET:
            raise ExportError(f"opset {req.opset} is not supported; valid: {MIN_OPSET}..{MAX_OPSET} (default {DEFAULT_OPSET})")
        exporter = req.options.get("exporter") or default_exporter()
        start = time.perf_counter()
        ladder = req.options.get("ladder")
        model, method = None, "traced"
        fallback = None
        if ladder is not None and ladder.template is not None:
            from .ladder import SubstitutionError

            try:
                model = self._substituted(req, ladder)
                method = "substituted"
            except SubstitutionError as exc:
                fallback = str(exc)
                ladder.fallbacks.append((float(req.metadata.get("us3l.width", "nan")), fallback))
                log.warning("width %s translated in full: %s", req.metadata.get("us3l.width", "?"), fallback)
        elif ladder is not None and ladder.disabled is not None:
            fallback = ladder.disabled
        if model is None:
            log.info("Exporting ONNX (%s exporter, opset %d) -> %s", exporter, req.opset, req.path.name)
            example = torch.zeros((req.batch or 2, *req.input_shape))
            data = torch_to_onnx_bytes(req.static, example, req.opset, req.batch is None, req.input_name,
                                       list(req.output_names) or req.output_name, exporter)
            model = onnx.load_from_string(data)
            if req.simplify:
                model = simplify_onnx(model)
            if ladder is not None and ladder.template is None:
                ladder.adopt(model, req.static, _width_of(req), req.batch, req.input_shape[-1])
        onnx.helper.set_model_props(model, {k: str(v) for k, v in req.metadata.items()})
        model.producer_name, model.producer_version = "us3l-deploy", __version__
        model.doc_string = "universally slimmable network sliced to one width"
        data = checked_bytes(model, "exported ONNX")
        written = graph_summary(model)["opset"]
        if written != req.opset:  # the opset asked for is the opset written, or nothing is written
            raise ExportError(f"the {exporter} exporter wrote opset {written}, not the {req.opset} asked for")
        req.path.parent.mkdir(parents=True, exist_ok=True)
        req.path.write_bytes(data)
        seconds = time.perf_counter() - start
        log.info("ONNX %s in %.2fs (%d nodes)", method, seconds, len(model.graph.node))
        info: dict[str, Any] = {"method": method, "seconds": round(seconds, 3)}
        if method == "substituted" and ladder is not None and ladder.template is not None:
            info["template_width"] = ladder.template.width
        if fallback:
            info["fallback"] = fallback
        return {"graph": graph_summary(model), "exporter": exporter, "simplified": bool(req.simplify), "export": info}

    def _substituted(self, req: ExportRequest, ladder: Any) -> Any:
        """This width's model derived from the ladder's template (:mod:`us3l.exporters.ladder`)."""
        from .ladder import finish, substitute

        with torch.no_grad():
            out = req.static(torch.zeros((req.batch or 1, *req.input_shape)))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        model = substitute(ladder.template, req.static, _width_of(req), req.batch, req.input_shape[-1],
                           [tuple(o.shape) for o in outs])
        exporter = req.options.get("exporter") or default_exporter()
        model = finish(model, req.simplify, ladder.template.ops, drop_whole_slices=exporter == "dynamo")
        ladder.substituted += 1
        return model

    def _reduced(self, req: ExportRequest) -> dict[str, Any]:
        """FP16 / INT8 from the FP32 ONNX of the same width (``req.onnx_path``), see :mod:`.onnx_quant`."""
        import onnx

        from .onnx_quant import fp16_tool, quantize_int8, to_fp16

        if req.onnx_path is None:
            raise ExportError(f"{req.precision} ONNX is converted from the FP32 ONNX of the same width; none was given")
        start = time.perf_counter()
        facts: dict[str, Any] = {}
        calibrated = Precision.parse(req.precision).plan.calibrated
        if not calibrated:  # FP16: a cast of the weights, no calibration
            model = to_fp16(onnx.load(str(req.onnx_path)))
            facts["precision_tool"] = fp16_tool()
        else:
            if req.calib_images is None:
                raise ExportError("INT8 calibration needs images; pass --calib-data")
            ranges = Path(req.options["ranges_path"])
            method = req.options.get("calibration", "minmax")
            recipe = req.options.get("int8_recipe")
            if recipe is not None:  # per-width recipe chosen on the held-out gate (us3l.exporters.int8_recipe)
                from .int8_recipe import choose_recipe, sensitive_nodes

                def quantize(src: Path, images: np.ndarray, out: Path, rng: Path, m: str, **kw: Any) -> dict[str, Any]:
                    return quantize_int8(src, images, out, rng, m, req.input_name, req.batch, **kw)

                def run(path: Path) -> Callable[[np.ndarray], np.ndarray]:
                    sess = ort_session(path, threads=1)
                    name = sess.get_inputs()[0].name
                    return batched_runner(lambda x: sess.run(None, {name: x.astype(np.float32)})[0], req.batch)

                groups = sensitive_nodes(onnx.load(str(req.onnx_path)), req.static)
                facts["calibration"] = choose_recipe(Path(req.onnx_path), req.calib_images, req.path, ranges, method,
                                                     recipe, quantize, run, groups)
            else:
                facts["calibration"] = quantize_int8(req.onnx_path, req.calib_images, req.path, ranges, method,
                                                     req.input_name, req.batch)
            model = onnx.load(str(req.path))
        onnx.helper.set_model_props(model, {**{k: str(v) for k, v in req.metadata.items()}, "us3l.precision": str(req.precision)})
        model.producer_name, model.producer_version = "us3l-deploy", __version__
        # ONNX Runtime's float16 converter appends its input Casts after the nodes that read them:
        # sorted here, then the full check, as for FP32 (onnx.reference and OpenCV load every file)
        data = checked_bytes(model, f"{req.precision} ONNX")
        req.path.write_bytes(data)
        log.info("%s ONNX written in %.2fs", req.precision, time.perf_counter() - start)
        return {**facts, "graph": graph_summary(model)}

    def runner(self, path: Path, req: ExportRequest) -> Callable[[np.ndarray], np.ndarray]:
        sess = ort_session(path, threads=1)  # parity needs correctness, not speed; never oversubscribe
        name = sess.get_inputs()[0].name
        return batched_runner(lambda x: sess.run(None, {name: x.astype(np.float32)})[0], req.batch)
