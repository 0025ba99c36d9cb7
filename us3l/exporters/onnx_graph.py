"""Every ONNX file an export writes is valid for any consumer: nodes in topological order, then
``onnx.checker.check_model(full_check=True)``, before a byte is written.

ONNX Runtime's float16 converter appends its input Casts after the Convs that read them; ONNX
Runtime sorts on load, but ``onnx.reference`` and OpenCV DNN refuse such a file, and so does the
full checker. :func:`checked_bytes` sorts and checks a model and returns the bytes to write;
:func:`recheck_file` does the same for a file another tool (a Q/DQ quantizer) wrote. This module
imports no other exporter module, so every writer (ONNX, TensorRT inputs, trtexec inputs) uses it.
"""

from __future__ import annotations

import heapq
import logging
from pathlib import Path
from typing import Any

from us3l.core.errors import ExportError

log = logging.getLogger(__name__)


def topological_sort(graph: Any) -> int:
    """Reorder ``graph``'s nodes (in place, subgraphs too) so that every node comes after the nodes
    producing its inputs, as the ONNX spec requires (``onnx.checker``'s full check, ``onnx.reference``
    and OpenCV DNN refuse otherwise; ONNX Runtime sorts on load). Kahn's algorithm, keeping the
    original order wherever it is already valid. Returns how many nodes moved.

    Raises:
        ExportError: a cycle, or an input no node, graph input or initializer provides.
    """
    for node in graph.node:  # If / Loop / Scan bodies
        for attr in node.attribute:
            if attr.HasField("g"):
                topological_sort(attr.g)
            for sub in attr.graphs:
                topological_sort(sub)
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    waiting = [0] * len(nodes)
    users: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        deps = {producer[name] for name in _consumed(n) if name in producer and producer[name] != i}
        waiting[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(nodes):
        raise ExportError(f"the ONNX graph has a cycle through {len(nodes) - len(order)} node(s); it cannot be ordered")
    moved = sum(1 for pos, i in enumerate(order) if pos != i)
    if moved:
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)
    return moved


def _consumed(node: Any) -> list[str]:
    """Names a node reads, including those its subgraphs read from the enclosing scope."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        subs = ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
        for g in subs:
            local = {o for n in g.node for o in n.output} | {i.name for i in g.input} | {t.name for t in g.initializer}
            names += [name for n in g.node for name in _consumed(n) if name not in local]
    return names


def checked_bytes(model: Any, what: str) -> bytes:
    """``model`` topologically sorted, serialised once and passed through
    ``onnx.checker.check_model(full_check=True)`` (structure, types and strict shape inference):
    the bytes to write. Every ONNX file an export writes, at every precision, goes through this.

    Raises:
        ExportError: the file would not be a valid ONNX model (one line naming ``what``).
    """
    import onnx

    moved = topological_sort(model.graph)
    if moved:
        log.debug("%s: %d node(s) reordered into topological order", what, moved)
    data = model.SerializeToString()  # serialise once: checked bytes == written bytes (single file, < 2 GB)
    try:
        onnx.checker.check_model(data, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"{what} failed onnx.checker (full check): {str(exc).splitlines()[0][:200]}") from None
    return data


def recheck_file(path: Path, what: str) -> None:
    """Pass an ONNX file a third-party tool wrote (a Q/DQ quantizer) through :func:`checked_bytes`
    and write it back: sorted, fully checked, or an :class:`ExportError`."""
    import onnx

    path.write_bytes(checked_bytes(onnx.load(str(path)), what))


def simplify_onnx(model: Any) -> Any:
    """Run onnxsim (shape inference, constant folding, fusions); dynamic axes are kept. Here, with
    no other exporter module imported, so the ladder (:mod:`us3l.exporters.ladder`) can use it.

    Raises:
        BackendUnavailableError: onnxsim is not installed. ExportError: onnxsim reported that the
            simplified model differs.
    """
    try:
        import onnxsim
    except ImportError:
        from us3l.core.errors import BackendUnavailableError

        raise BackendUnavailableError("python package 'onnxsim' is not installed; install it with "
                                      "'pip install onnxsim'") from None
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise ExportError("onnxsim produced a model that failed its own check; export with simplify=False")
    return simplified
