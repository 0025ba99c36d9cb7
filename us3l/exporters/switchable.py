"""One ONNX file holding every width of a ladder, switched at run time by an int64 input.

The file (``us3l export --switchable``) has two inputs, the images (``input``) and a scalar int64
``width_index`` (0 .. N-1, N <= 16, in the order of the sidecar's ``switchable.index``), and the same
outputs (names and ranks) as a per-width file. Inside, a chain of ``If`` nodes runs exactly one
branch, the network at that width:

- convolution and linear weights are stored **once**, at the largest width, as top-level
  initializers; each branch ``Slice``s the first channels it needs (ONNX Runtime folds those
  slices when the session loads, so the saving is in download and disk, not in RAM);
- each branch keeps its **own BatchNorm statistics** as a per-channel scale and shift
  (``Conv -> Mul -> Add``) rather than folded into the shared weights (which would make them
  per-width again); tensors that are not first-channel slices of the widest one (a per-width
  classifier head, constants) are kept in their branch;
- the ``If``s form a balanced tree (``width_index < mid``), so every width passes the same
  ceil(log2 N) of them; an index outside 0 .. N-1 fails at run time (a ``Gather`` out of range:
  ONNX has no assert), and the runners of this package refuse it before running, in one line.

Each branch is derived from that width's ordinary FP32 ONNX (translated or substituted, see
:mod:`us3l.exporters.ladder`): its initializers are matched by value to the network's tensors
(:func:`us3l.exporters.ladder.match_initializers`), folded convolutions are unfolded into the raw
weight (shared) and the BN scale/shift (per branch), and the sharing itself is checked by value
(a branch tensor is a slice of the shared one or it stays in the branch). The pipeline then gates
every index against PyTorch at that width.

:func:`fix_width` turns the file back into a plain one-width graph (the ``If`` and the slices fold
away, scale and shift are folded into the convolution again): what TensorRT builds an engine
from, with the operators of the per-width file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from us3l.core.errors import ConfigError, ExportError
from us3l.core.precision import SWITCHABLE_PRECISIONS, Precision
from us3l.core.width import held_widths, index_for  # noqa: F401  (re-exported: the index table's widths)

log = logging.getLogger(__name__)

WIDTH_INPUT = "width_index"
MAX_WIDTHS = 16
PRECISIONS = SWITCHABLE_PRECISIONS
SHARED_PREFIX = "shared/"


@dataclass
class Branch:
    """One width of a switchable file: its FP32 ONNX model and the static network it came from."""

    width: float
    model: Any  # onnx.ModelProto
    module: nn.Module


def _np(init: Any) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(init)


def _tensor(name: str, value: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.require(value, requirements="C"), name)  # keeps 0-d scalars 0-d


def _prefix_of(shared: np.ndarray, value: np.ndarray) -> bool:
    """Whether ``value`` is ``shared`` cut to its first entries along every axis."""
    if shared.ndim != value.ndim or any(v > s for v, s in zip(value.shape, shared.shape)):
        return False
    return bool(np.array_equal(shared[tuple(slice(0, d) for d in value.shape)], value))


class _Builder:
    """Collects the shared initializers while branches are converted."""

    def __init__(self, widest: dict[str, np.ndarray]) -> None:
        self.widest = widest
        self.shared: dict[str, np.ndarray] = {}

    def use(self, key: str, value: np.ndarray, prefix: str, nodes: list[Any], inits: list[Any], out_name: str) -> str | None:
        """The name a branch reads ``value`` under when it is a slice of the widest width's ``key``
        (appending the Slice to ``nodes``); None when it is not."""
        import onnx

        full = self.widest.get(key)
        if full is None or not _prefix_of(full, value):
            return None
        shared_name = SHARED_PREFIX + key
        self.shared.setdefault(shared_name, full)
        if value.shape == full.shape:
            return shared_name
        starts, ends = f"{out_name}/starts", f"{out_name}/ends"
        axes = f"{out_name}/axes"
        inits += [_tensor(starts, np.zeros(value.ndim, np.int64)), _tensor(ends, np.asarray(value.shape, np.int64)),
                  _tensor(axes, np.arange(value.ndim, dtype=np.int64))]
        nodes.append(onnx.helper.make_node("Slice", [shared_name, starts, ends, axes], [out_name], name=f"{out_name}/slice"))
        return out_name


def _branch_graph(index: int, br: Branch, builder: _Builder, input_names: set[str]) -> tuple[Any, dict[str, Any]]:
    """Branch ``index`` as an ONNX graph reading the top-level inputs and shared initializers."""
    import onnx

    from .ladder import bn_scale_shift, match_initializers, network_tensors

    prefix = f"w{index}/"
    model = br.model
    tensors = network_tensors(br.module)
    keys_of, _ = match_initializers(model, tensors)
    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes: list[Any] = []
    branch_inits: list[Any] = []
    rename: dict[str, str] = {n: n for n in input_names}
    unfold: dict[int, tuple[str, str]] = {}  # id(conv node) -> (scale name, shift name)
    stats = {"shared": 0, "sliced": 0, "branch": 0, "bn_unfolded": 0}

    def keep(init: Any) -> None:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = prefix + init.name
        branch_inits.append(copy)
        rename[init.name] = copy.name
        stats["branch"] += 1

    handled_bias: set[str] = set()
    for name, init in inits.items():
        keys = keys_of.get(name)
        if not keys:
            if name not in rename:
                keep(init)
            continue
        key = keys[0]
        if key.endswith(":fold_w"):
            conv, bn = key[: -len(":fold_w")].split("+", 1)
            users = consumers.get(name, [])
            convs = [n for n in users if n.op_type == "Conv" and len(n.input) >= 3 and n.input[1] == name
                     and keys_of.get(n.input[2], [""])[0] == f"{conv}+{bn}:fold_b"]
            raw = tensors.get(f"{conv}.weight")
            if raw is None or len(convs) != len(users):
                keep(init)
                continue
            out = prefix + name
            got = builder.use(f"{conv}.weight", raw, prefix, nodes, branch_inits, out)
            if got is None:
                branch_inits.append(_tensor(out, raw))
                got = out
                stats["branch"] += 1
            else:
                stats["sliced" if got != SHARED_PREFIX + f"{conv}.weight" else "shared"] += 1
            rename[name] = got
            scale, shift = bn_scale_shift(br.module.get_submodule(bn))
            s_name, b_name = f"{prefix}{bn}/scale", f"{prefix}{bn}/shift"
            if s_name not in {i.name for i in branch_inits}:
                shape = (-1,) + (1,) * (raw.ndim - 2)
                branch_inits += [_tensor(s_name, scale.reshape(shape)), _tensor(b_name, shift.reshape(shape))]
            for n in convs:
                unfold[id(n)] = (s_name, b_name)
                handled_bias.add(n.input[2])
            stats["bn_unfolded"] += 1
            continue
        if key.endswith(":fold_b"):
            continue  # decided with its weight (below, if no conv took it)
        value = _np(init)
        out = prefix + name
        got = builder.use(key, value, prefix, nodes, branch_inits, out)
        if got is None:
            keep(init)
        else:
            rename[name] = got
            stats["sliced" if got == out else "shared"] += 1
    for name, keys in keys_of.items():
        if keys[0].endswith(":fold_b") and name not in handled_bias and name not in rename:
            keep(inits[name])
    for node in model.graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + (node.name or f"{node.op_type}_{len(nodes)}")
        for j, name in enumerate(node.input):
            if name:
                new.input[j] = rename.get(name, prefix + name)
        for j, name in enumerate(node.output):
            if name:
                new.output[j] = prefix + name
        if id(node) in unfold:
            s_name, b_name = unfold[id(node)]
            del new.input[2:]
            final = new.output[0]
            new.output[0] = final + "/conv"
            nodes.append(new)
            nodes.append(onnx.helper.make_node("Mul", [final + "/conv", s_name], [final + "/scaled"], name=final + "/bn_scale"))
            nodes.append(onnx.helper.make_node("Add", [final + "/scaled", b_name], [final], name=final + "/bn_shift"))
            continue
        nodes.append(new)
    outputs = []
    for o in model.graph.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.name = prefix + o.name
        outputs.append(vi)
    graph = onnx.helper.make_graph(nodes, f"width_{index}", [], outputs, initializer=branch_inits)
    return graph, stats


def _guard(n: int) -> list[Any]:
    """Nodes computing ``select`` = ``width_index`` when it lies in ``0 .. n-1``, failing otherwise:
    ``Gather(arange(n), i)`` rejects ``i >= n`` and ``Gather(arange(n), i - n)`` rejects ``i < 0``
    (negative indices count from the end, down to ``-n``); the second is multiplied by 0 and added so
    that both run. ONNX has no assert; this costs four scalar operations."""
    import onnx

    h = onnx.helper
    return [
        h.make_node("Constant", [], ["select/range"], value=_tensor("", np.arange(n, dtype=np.int64)), name="select/range"),
        h.make_node("Constant", [], ["select/n"], value=_tensor("", np.asarray(n, np.int64)), name="select/n"),
        h.make_node("Constant", [], ["select/zero"], value=_tensor("", np.asarray(0, np.int64)), name="select/zero"),
        h.make_node("Gather", ["select/range", WIDTH_INPUT], ["select/below_n"], axis=0, name="select/below_n"),
        h.make_node("Sub", [WIDTH_INPUT, "select/n"], ["select/shifted"], name="select/shifted"),
        h.make_node("Gather", ["select/range", "select/shifted"], ["select/not_negative"], axis=0,
                    name="select/not_negative"),
        h.make_node("Mul", ["select/not_negative", "select/zero"], ["select/nothing"], name="select/nothing"),
        h.make_node("Add", ["select/below_n", "select/nothing"], [SELECT], name="select/index"),
    ]


SELECT = "select/checked_index"


def _tree(lo: int, hi: int, branches: list[Any], names: list[str], otype: dict[str, int], top: bool) -> list[Any]:
    """Nodes choosing among ``branches[lo:hi]`` by ``select``: ``If(select < mid, left, right)``,
    a balanced tree (depth ceil(log2 N): every width runs through the same few ``If``s)."""
    import onnx

    h = onnx.helper
    outs = names if top else [f"t{lo}_{hi}/{n}" for n in names]

    def side(a: int, b: int) -> Any:
        if b - a == 1:
            return branches[a]
        return h.make_graph(_tree(a, b, branches, names, otype, False), f"widths_{a}_{b}", [],
                            [h.make_tensor_value_info(f"t{a}_{b}/{n}", otype[n], None) for n in names])

    if hi - lo == 1:  # a single width: the guard has already refused every other index
        then_g = else_g = branches[lo]
        mid = lo + 1
    else:
        mid = (lo + hi) // 2
        then_g, else_g = side(lo, mid), side(mid, hi)
    const, cond = f"t{lo}_{hi}/mid", f"t{lo}_{hi}/below_mid"
    return [h.make_node("Constant", [], [const], value=_tensor("", np.asarray(mid, np.int64)), name=const),
            h.make_node("Less", [SELECT, const], [cond], name=cond),
            h.make_node("If", [cond], outs, then_branch=then_g, else_branch=else_g, name=f"t{lo}_{hi}/if",
                        doc_string=f"widths {lo}..{hi - 1}: then {lo}..{mid - 1}, else {mid}..{hi - 1}")]


def _select(names: list[str], branches: list[Any], outputs: Sequence[Any]) -> list[Any]:
    """Top-level nodes: the index guard, then the balanced tree of ``If``s over the branches."""
    otype = {o.name: o.type.tensor_type.elem_type for o in outputs}
    return _guard(len(branches)) + _tree(0, len(branches), branches, names, otype, True)


def build_switchable(branches: Sequence[Branch], metadata: dict[str, str]) -> tuple[Any, dict[str, Any]]:
    """The switchable model of ``branches`` (index = position) and facts for the sidecar.

    Raises:
        ConfigError: no branch, more than :data:`MAX_WIDTHS`, or outputs that differ in name or rank.
    """
    import onnx

    from .ladder import network_tensors

    if not branches:
        raise ConfigError("a switchable file needs at least one width")
    if len(branches) > MAX_WIDTHS:
        raise ConfigError(f"a switchable file holds at most {MAX_WIDTHS} distinct widths; {len(branches)} were asked "
                          "for; valid: a shorter list or range")
    first = branches[0].model
    names = [o.name for o in first.graph.output]
    ranks = [len(o.type.tensor_type.shape.dim) for o in first.graph.output]
    for br in branches[1:]:
        if [o.name for o in br.model.graph.output] != names or \
                [len(o.type.tensor_type.shape.dim) for o in br.model.graph.output] != ranks:
            raise ConfigError("the widths give outputs of different names or ranks; a switchable file needs the same "
                              "outputs at every width (features, logits, probs, or stages with equal ranks)")
    widest = max(range(len(branches)), key=lambda i: branches[i].width)
    builder = _Builder(network_tensors(branches[widest].module))
    input_vi = first.graph.input[0]
    graphs, stats = [], []
    for i, br in enumerate(branches):
        g, s = _branch_graph(i, br, builder, {input_vi.name})
        graphs.append(g)
        stats.append(s)
    nodes = _select(names, graphs, first.graph.output)
    outputs = []
    for j, o in enumerate(first.graph.output):
        dims = [[(d.dim_value if d.HasField("dim_value") else d.dim_param or None) for d in br.model.graph.output[j].type.tensor_type.shape.dim]
                for br in branches]
        shape: list[Any] = []
        for axis in range(ranks[j]):
            values = {(d[axis],) for d in dims}
            value = dims[0][axis]
            shape.append(value if len(values) == 1 else f"{o.name}_dim{axis}")
        outputs.append(onnx.helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, shape))
    index_vi = onnx.helper.make_tensor_value_info(WIDTH_INPUT, onnx.TensorProto.INT64, [])
    inits = [_tensor(n, v) for n, v in builder.shared.items()]
    graph = onnx.helper.make_graph(nodes, "us3l_switchable", [input_vi, index_vi], outputs, initializer=inits)
    model = onnx.helper.make_model(graph, opset_imports=list(first.opset_import), producer_name="us3l-deploy")
    model.ir_version = first.ir_version
    model.doc_string = "universally slimmable network: every width in one file, chosen by the width_index input"
    onnx.helper.set_model_props(model, dict(metadata))
    data = model.SerializeToString()
    try:
        onnx.checker.check_model(data, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"switchable ONNX failed onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    facts = {"shared_initializers": len(inits), "shared_values": int(sum(v.size for v in builder.shared.values())),
             "branches": stats}
    return model, facts


# ----------------------------------------------------------------------------- reading a switchable file


def switchable_table(path_or_model: Any) -> list[dict[str, Any]] | None:
    """The index table of a switchable file (its ``us3l.switchable`` metadata), or None for a
    per-width file. Each row: ``{"index", "width", "aliases", "channels", "macs", "params",
    "feature_dim", "accuracy"}``."""
    import onnx

    model = path_or_model if hasattr(path_or_model, "graph") else onnx.load(str(path_or_model), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "us3l.switchable" not in props:
        return None
    return list(json.loads(props["us3l.switchable"]))


def check_index(index: int, n: int) -> None:
    """Refuse an index outside ``0 .. n-1`` (the file's last branch would fail with ONNX Runtime's
    own message otherwise)."""
    if not 0 <= int(index) < n:
        raise ConfigError(f"width_index {index} is outside this file's 0..{n - 1}")


def switchable_runner(path: Any, index: int, batch: int | None = None, threads: int = 0,
                      all_outputs: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """A function running a switchable file at ``index`` on float32 NCHW batches (first output, or
    every output flattened and concatenated per image with ``all_outputs``)."""
    from .onnx_exporter import batched_runner, ort_session
    from .outputs import flatten_outputs

    sess = ort_session(path if not isinstance(path, str) else __import__("pathlib").Path(path), threads=threads)
    n = len(switchable_table(path) or [])
    check_index(index, n)
    name = next(i.name for i in sess.get_inputs() if i.name != WIDTH_INPUT)
    idx = np.asarray(int(index), dtype=np.int64)

    def run(x: np.ndarray) -> np.ndarray:
        outs = sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32), WIDTH_INPUT: idx})
        return flatten_outputs(outs) if all_outputs else np.asarray(outs[0], dtype=np.float32)

    return batched_runner(run, batch)


# ----------------------------------------------------------------------------- one width out of the file


def fix_width(model: Any, index: int) -> Any:
    """The plain one-width model of a switchable ``model`` at ``index``: ``width_index`` fixed,
    the ``If`` chain replaced by the chosen branch, shared-weight slices and BN scale/shift folded
    into the convolutions again (the operators of the per-width file). TensorRT builds its engine
    from this graph.

    Raises:
        ConfigError: not a switchable model, or an index outside it.
    """
    import onnx

    table = switchable_table(model)
    if table is None:
        raise ConfigError("not a switchable file (no us3l.switchable metadata); it already has one width")
    check_index(index, len(table))
    graph, branch = model.graph, None
    while branch is None:  # descend the tree: If(select < mid, then, else)
        node = next(n for n in graph.node if n.op_type == "If")
        mid = next(int(_np(n.attribute[0].t)) for n in graph.node if n.op_type == "Constant" and n.output[0] == node.name[:-3] + "/mid")
        sub = next(a.g for a in node.attribute if a.name == ("then_branch" if index < mid else "else_branch"))
        branch = sub if sub.name.startswith("width_") else None
        graph = sub
    names = [o.name for o in model.graph.output]
    inner = [o.name for o in branch.output]
    rename = dict(zip(inner, names))
    consts: dict[str, np.ndarray] = {i.name: _np(i) for i in model.graph.initializer}
    consts.update({i.name: _np(i) for i in branch.initializer})
    nodes: list[Any] = []
    for n in branch.node:
        new = onnx.NodeProto()
        new.CopyFrom(n)
        for j, name in enumerate(new.output):
            new.output[j] = rename.get(name, name)
        for j, name in enumerate(new.input):
            new.input[j] = rename.get(name, name)
        nodes.append(new)
    # fold Slice(constant) into constants
    folded: list[Any] = []
    for n in nodes:
        if n.op_type == "Slice" and all(i in consts for i in n.input if i):
            data, starts, ends = consts[n.input[0]], consts[n.input[1]], consts[n.input[2]]
            axes = consts[n.input[3]] if len(n.input) > 3 and n.input[3] else np.arange(len(starts))
            index_ = [slice(None)] * data.ndim
            for s, e, a in zip(starts.tolist(), ends.tolist(), axes.tolist()):
                index_[a] = slice(s, e)
            consts[n.output[0]] = np.ascontiguousarray(data[tuple(index_)])
            continue
        folded.append(n)
    nodes = _fold_scale_shift(folded, consts)
    used = {i for n in nodes for i in n.input}
    inits = [_tensor(name, consts[name]) for name in sorted(used) if name in consts]
    input_vi = next(i for i in model.graph.input if i.name != WIDTH_INPUT)
    outputs = []
    for o, b in zip(model.graph.output, branch.output):
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(b)
        vi.name = o.name
        outputs.append(vi)
    graph = onnx.helper.make_graph(nodes, f"width_{index}", [input_vi], outputs, initializer=inits)
    out = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="us3l-deploy")
    out.ir_version = model.ir_version
    row = table[index]
    props = {p.key: p.value for p in model.metadata_props if p.key != "us3l.switchable"}
    props.update({"us3l.width": str(row["width"]), "us3l.aliases": ",".join(str(a) for a in row.get("aliases", [])),
                  "us3l.switchable_index": str(index)})
    onnx.helper.set_model_props(out, props)
    onnx.checker.check_model(out.SerializeToString(), full_check=True)
    return out


def _fold_scale_shift(nodes: list[Any], consts: dict[str, np.ndarray]) -> list[Any]:
    """``Conv(x, W) -> Mul(s) -> Add(b)`` with constant W, s, b and no other reader of the
    intermediate tensors becomes ``Conv(x, W * s, b)``."""
    readers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    drop: set[int] = set()
    for n in nodes:
        if n.op_type != "Conv" or len(n.input) > 2 or n.input[1] not in consts:
            continue
        mul = readers.get(n.output[0], [])
        if len(mul) != 1 or mul[0].op_type != "Mul" or mul[0].input[0] != n.output[0] or mul[0].input[1] not in consts:
            continue
        add = readers.get(mul[0].output[0], [])
        if len(add) != 1 or add[0].op_type != "Add" or add[0].input[0] != mul[0].output[0] or add[0].input[1] not in consts:
            continue
        w, s, b = consts[n.input[1]], consts[mul[0].input[1]], consts[add[0].input[1]]
        if s.size != w.shape[0] or b.size != w.shape[0]:
            continue
        wname, bname = n.input[1] + "/folded", n.input[1] + "/bias"
        consts[wname] = (w.astype(np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))).astype(w.dtype)
        consts[bname] = b.reshape(-1).astype(w.dtype)
        n.input[1] = wname
        n.input.append(bname)
        n.output[0] = add[0].output[0]
        drop.update((id(mul[0]), id(add[0])))
    return [n for n in nodes if id(n) not in drop]


# ----------------------------------------------------------------------------- the export command


def _accuracy_rows(cfg: Any, source_hash: str) -> dict[float, dict[str, float]]:
    """``{width: {protocol: value}}``: the PyTorch network's FP32 accuracy per width, from the
    ``accuracy.json`` beside the checkpoint when it describes these weights and these outputs
    (recorded in the file's index table as what the PyTorch network measured, ``source: pytorch``;
    bench joins only rows measured on the file itself)."""
    from pathlib import Path

    from us3l.core.accuracy import ACCURACY_FILE, normalize_rows, read_accuracy_file, row_precision
    from us3l.core.errors import DataError

    if not cfg.checkpoint:
        return {}
    ckpt = Path(cfg.checkpoint)
    path = (ckpt if ckpt.is_dir() else ckpt.parent) / ACCURACY_FILE
    if not path.is_file():
        return {}
    try:
        data = read_accuracy_file(path)
    except DataError:
        return {}
    if data.get("checkpoint") != source_hash:
        return {}
    out: dict[float, dict[str, float]] = {}
    for row in normalize_rows(data["results"]):
        if row_precision(row) == Precision.FP32 and row.get("source", "pytorch") == "pytorch" \
                and row.get("outputs") == cfg.outputs and int((row.get("details") or {}).get("divisor", 8)) == cfg.snap:
            out.setdefault(round(float(row["width"]), 6), {})[row["protocol"]] = float(row[row["protocol"]])
    return out


def _head_record(head: dict[str, Any] | None, include_head: Any, out_dir: Any) -> dict[str, Any] | None:
    """The widest branch's head record, its ``--include-head`` path seen from the switchable file's
    folder (the branches were written in a temporary one)."""
    from us3l.core.files import relative_path

    if head is None or not include_head or "path" not in head:
        return head
    return {**head, "path": relative_path(include_head, out_dir)}


def _rebased(side: dict[str, Any], src_dir: Any, out_dir: Any) -> dict[str, Any]:
    """``side`` with its checkpoint / head paths (relative to ``src_dir``) seen from ``out_dir``."""
    from pathlib import Path

    from us3l.core.files import relative_path

    out = dict(side)
    for key in ("checkpoint", "head"):
        rec = out.get(key)
        if isinstance(rec, dict) and rec.get("path"):
            p = Path(rec["path"])
            out[key] = {**rec, "path": relative_path(p if p.is_absolute() else Path(src_dir) / p, out_dir)}
    return out


def _cache_key(cfg: Any, net: Any, widths: list[float], calib: Any) -> dict[str, Any]:
    from dataclasses import asdict

    from us3l.core import __version__

    from .artifacts import jsonable

    fields = {k: v for k, v in asdict(cfg).items()
              if k not in ("out_dir", "force", "name", "threads", "checkpoint", "arch", "widths")}
    return jsonable({"switchable": True, "checkpoint": net.source_hash, "widths": widths, "tool": __version__,
                     "data": calib.describe(), **fields})


def export_switchable(cfg: Any, progress: Any, network: Any, export_widths: Any, base_name: Any) -> Any:
    """``us3l export --switchable``: the per-width FP32 ONNX files (a ladder, by substitution) are
    built in a temporary folder, merged into one switchable file, gated at every index against
    PyTorch at that width, and written (with its sidecar) only when every index passed.

    Args:
        export_widths: ``fn(cfg, progress, network, keep=dict)`` writing the per-width files (the
            pipeline's own, passed in so that this module does not import the pipeline).
        base_name: ``fn(cfg, network)``: the default artifact-name prefix.

    Raises:
        ConfigError: another format or precision, more than 16 distinct widths. ParityError: an
            index does not match PyTorch (fp32 tolerance; fp16 mean cosine >= 0.999).
    """
    import dataclasses
    import platform
    import tempfile
    import time
    from datetime import datetime, timezone
    from pathlib import Path

    import onnx
    import torch

    from us3l.core.files import relative_path, sha256_file
    from us3l.core.slicing import find_aliases
    from us3l.core.width import format_width, parse_widths

    from .artifacts import SIDECAR_SCHEMA, Artifact, ExportResult, Staging, cached_artifact, tool_versions
    from .onnx_quant import accuracy_gate, enforce_gate
    from .outputs import flatten_outputs
    from .parity import compare, enforce
    from .source import CalibrationSet, check_input_size, load_network

    t0 = time.perf_counter()
    precision = Precision.parse(cfg.precision)
    if cfg.format != "onnx" or precision not in PRECISIONS:
        raise ConfigError(f"--switchable writes one ONNX file in fp32 or fp16 (it holds the gate at every width), not "
                          f"{cfg.format} {cfg.precision}; for TensorRT build an engine per width from the switchable "
                          f"file: us3l export FILE_switchable.onnx --widths W --format trt")
    net = network if network is not None else load_network(cfg.checkpoint, cfg.arch, cfg.seed, cfg.image_size)
    if network is not None and cfg.image_size and int(cfg.image_size) != net.model.input_size:
        check_input_size(net.model, int(cfg.image_size))
    lo, hi = net.model.width_range  # type: ignore[misc]  # every registered network has one
    widths = parse_widths(cfg.widths, float(lo), float(hi))
    distinct = sorted({f for f in find_aliases(net.model, widths, cfg.snap).values()})
    if len(distinct) > MAX_WIDTHS:
        raise ConfigError(f"a switchable file holds at most {MAX_WIDTHS} distinct widths; {len(distinct)} were asked "
                          "for; valid: a shorter list or range")
    calib = CalibrationSet(cfg.calib_data, net.checkpoint.dataset if net.checkpoint else None,
                           int(cfg.image_size or net.model.input_size), int(net.model.in_chans), net.untrained, cfg.seed,  # type: ignore[arg-type]
                           limit=max(cfg.bn_images, cfg.int8_images + cfg.gate_images, cfg.parity_images))
    prefix = (cfg.name or base_name(cfg, net)) + ("" if cfg.outputs == "features" else f"_{cfg.outputs}")
    stem = f"{prefix}_switchable" + (f"_s{cfg.snap}" if cfg.snap != 8 else "") + (f"_b{cfg.batch}" if cfg.batch else "") \
        + ("" if precision is Precision.FP32 else f"_{precision}")
    name, sidecar_name = stem + ".onnx", stem + ".json"
    out_dir = Path(cfg.out_dir)
    key = _cache_key(cfg, net, [float(w) for w in widths], calib)
    result = ExportResult(out_dir=out_dir)
    with Staging(out_dir) as staging:
        old = cached_artifact(out_dir / name, out_dir / sidecar_name, key, cfg.force, repairable=name in staging.repairable)
        if old is not None:
            staging.settled.update((name, sidecar_name))
            staging.commit()
            result.artifacts.append(Artifact.from_sidecar(out_dir / sidecar_name, old, cached=True))
            result.seconds = time.perf_counter() - t0
            return result
        keep: dict[float, nn.Module] = {}
        with tempfile.TemporaryDirectory(prefix="us3l-switchable-") as tmp:
            inner = dataclasses.replace(cfg, switchable=False, precision=Precision.FP32, out_dir=tmp, force=True,
                                        name=prefix if cfg.outputs == "features" else (cfg.name or base_name(cfg, net)))
            per_width = export_widths(inner, progress, net, keep=keep)
            arts = sorted(per_width.artifacts, key=lambda a: a.width)
            sides = [json.loads(a.sidecar.read_text()) for a in arts]
            branches = [Branch(a.width, onnx.load(str(a.path)), keep[a.width]) for a in arts]
            per_width_bytes = [int(a.path.stat().st_size) for a in arts]
        accuracy = _accuracy_rows(cfg, net.source_hash)
        table: list[dict[str, Any]] = []
        for i, (a, side) in enumerate(zip(arts, sides)):
            acc = accuracy.get(round(a.width, 6))
            table.append({"index": i, "width": a.width, "aliases": list(a.aliases), "channels": dict(a.channels),
                          "macs": int(a.macs), "params": int(a.params), "feature_dim": int(a.feature_dim),
                          "export_method": (side.get("export") or {}).get("method"),
                          "accuracy": acc or None})
        props = {p.key: p.value for p in branches[-1].model.metadata_props
                 if p.key not in ("us3l.width", "us3l.aliases")}
        props["us3l.switchable"] = json.dumps(table, sort_keys=True)
        props["us3l.widths"] = json.dumps([format_width(r["width"]) for r in table])
        props["us3l.precision"] = str(precision)
        model, facts = build_switchable(branches, props)
        if precision.reduced:
            from .onnx_quant import fp16_tool, to_fp16

            model = to_fp16(model)
            onnx.helper.set_model_props(model, props)
            facts["precision_tool"] = fp16_tool()
        path = staging.path(name)
        onnx.save_model(model, str(path))
        x = calib.images()[-cfg.gate_images:] if precision.reduced else calib.images()[: cfg.parity_images]
        records = []
        what = f"switchable {precision}"
        for row, br in zip(table, branches):
            with torch.no_grad():
                ref = flatten_outputs(br.module(x))
            out = switchable_runner(path, row["index"], cfg.batch, threads=1, all_outputs=True)(x.numpy())
            label = f"{what} index {row['index']} (width {format_width(row['width'])})"
            if not precision.reduced:
                atol, rtol = precision.plan.tolerance
                rec = compare(ref, out, cfg.atol if cfg.atol is not None else atol,
                              cfg.rtol if cfg.rtol is not None else rtol, "onnxruntime", calib.kind)
                enforce(rec, label)
                record = {"index": row["index"], "width": row["width"], **rec.to_dict()}
            else:
                gate = accuracy_gate(ref, out, cfg.min_cosine if cfg.min_cosine is not None else float(precision.plan.min_cosine or 0),
                                     "onnxruntime", calib.kind, cfg.outputs in ("logits", "probs"))
                enforce_gate(gate, label + " (fp16 does not hold the gate here; export --precision fp32)")
                record = {"index": row["index"], "width": row["width"], **gate.to_dict()}
            row["parity"] = {k: record[k] for k in ("max_abs_err", "mean_cosine", "passed") if k in record}
            records.append(record)
        size = int(path.stat().st_size)
        widest = max(range(len(arts)), key=lambda i: arts[i].width)
        wa, ws = arts[widest], sides[widest]
        parity = {"gate": "per_index", "passed": True, "precision": str(precision), "inputs": calib.kind,
                  "num_images": len(x), "max_abs_err": max(r["max_abs_err"] for r in records),
                  "per_index": records}
        if precision.reduced:
            parity["mean_cosine"] = min(r["mean_cosine"] for r in records)
        data = {
            "schema": SIDECAR_SCHEMA, "artifact": name, "format": "onnx", "precision": str(precision),
            "sha256": sha256_file(path), "size_bytes": size, "width": wa.width, "aliases": [], "divisor": cfg.snap,
            "arch": net.arch, "arch_kwargs": net.arch_kwargs, "untrained": net.untrained,
            "checkpoint": {"path": relative_path(net.source_path, out_dir), "sha256": net.source_hash,
                           "method": net.method},
            "channels": dict(wa.channels), "feature_dim": int(wa.feature_dim), "macs": int(wa.macs), "params": int(wa.params),
            "bn": [s.get("bn") for s in sides],
            "input": ws["input"], "output": {**ws["output"], "shape": None if len({a.feature_dim for a in arts}) > 1
                                             else ws["output"].get("shape")},
            "inputs": [ws["input"]["name"], WIDTH_INPUT],
            "switchable": {"input": WIDTH_INPUT, "dtype": "int64", "shape": [], "index": table,
                           "widths": [w for row in table for w in [row["width"], *row["aliases"]]],
                           "per_width_bytes": per_width_bytes, "widest_bytes": per_width_bytes[widest],
                           "size_over_widest": round(size / per_width_bytes[widest], 4),
                           "size_over_sum": round(size / sum(per_width_bytes), 4)},
            "stages": ws.get("stages"), "classes": ws.get("classes"), "preprocess": ws.get("preprocess"),
            "head": _head_record(ws.get("head"), cfg.include_head, out_dir), "parity": parity, "calibration": None, "opset": cfg.opset,
            "versions": tool_versions(), "format_info": {**facts, "graph": {"opset": cfg.opset}},
            "export": {"method": "switchable", "branches": [r["export_method"] for r in table]},
            "source_onnx": None, "cache_key": key,
            "build": {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      "seconds": round(time.perf_counter() - t0, 3), "host": platform.node()},
        }
        staging.write_json(sidecar_name, data)
        staging.commit()
    result.artifacts.append(Artifact.from_sidecar(out_dir / sidecar_name, data, cached=False))
    result.seconds = time.perf_counter() - t0
    log.info("switchable file %s: %d widths, %d bytes (%.3fx the widest per-width file)", name, len(table), size,
             size / per_width_bytes[widest])
    return result


# ----------------------------------------------------------------------------- one width out of a switchable file, as an artifact


def export_from_switchable(cfg: Any, progress: Any = None) -> Any:
    """``us3l export FILE_switchable.onnx --widths W [--format trt]``: each asked width fixed out of
    the switchable file (:func:`fix_width`) and written as a one-width ONNX artifact, or built into a
    TensorRT engine from that graph; every file is gated against the switchable file itself at
    that index (ONNX Runtime), and nothing is written unless all passed.

    Raises:
        ConfigError: not a switchable file, a width it does not hold (one line listing them), or a
            format/precision this path cannot give. BackendUnavailableError: TensorRT missing here.
    """
    import platform
    import time
    from datetime import datetime, timezone
    from pathlib import Path

    import onnx
    import torch

    from us3l.core.files import sha256_file
    from us3l.core.width import format_width, parse_widths

    from .artifacts import SIDECAR_SCHEMA, Artifact, ExportResult, Staging, artifact_stem, read_sidecar, tool_versions
    from .onnx_quant import accuracy_gate, enforce_gate
    from .parity import compare, enforce
    from .registry import ExportRequest, get_exporter
    from .source import CalibrationSet

    t0 = time.perf_counter()
    src = Path(str(cfg.checkpoint))
    model = onnx.load(str(src))
    table = switchable_table(model)
    if table is None:
        raise ConfigError(f"{src.name} is a one-width ONNX file; export widths from its checkpoint, or give a "
                          "switchable file (us3l export CKPT --switchable)")
    props = {p.key: p.value for p in model.metadata_props}
    file_precision = Precision.parse(props.get("us3l.precision", "fp32"))
    precision = Precision.parse(cfg.precision)
    exporter = get_exporter(cfg.format)
    if cfg.format == "onnx" and precision is not file_precision:
        raise ConfigError(f"{src.name} is {file_precision}; the widths fixed out of it are {file_precision} ONNX "
                          f"(--precision {file_precision}), or build TensorRT engines from it (--format trt)")
    if cfg.format not in ("onnx", "trt"):
        raise ConfigError(f"a switchable file gives one-width ONNX (--format onnx) or TensorRT engines (--format trt), "
                          f"not {cfg.format}")
    exporter.check_available(precision)
    side = read_sidecar(src.with_suffix(".json")) or {}
    held_side = side.get("artifact") == src.name
    widths = parse_widths(cfg.widths, 0.0, 1.0)
    indices = list(dict.fromkeys(index_for(table, w, src.name) for w in widths))
    input_vi = next(i for i in model.graph.input if i.name != WIDTH_INPUT)
    dims = [d.dim_value or None for d in input_vi.type.tensor_type.shape.dim]
    input_shape = (int(dims[1] or 3), int(dims[2] or 1), int(dims[3] or 1))
    fixed_batch = dims[0]
    if cfg.batch and fixed_batch and cfg.batch != fixed_batch:
        raise ConfigError(f"{src.name} has a fixed batch of {fixed_batch}; --batch {cfg.batch} cannot change it")
    batch = cfg.batch or fixed_batch
    calib = CalibrationSet(cfg.calib_data, None, input_shape[-1], input_shape[0], True, cfg.seed,
                           limit=max(cfg.int8_images + cfg.gate_images, cfg.parity_images))
    x_all = calib.images()
    if precision.plan.calibrated and calib.kind == "random":
        raise ConfigError("INT8 engines calibrate on real images; pass --calib-data (the images the file was "
                          "exported for, an .npy/.pt array or a dataset name)")
    base = src.stem.split("_switchable")[0]
    out_dir = Path(cfg.out_dir)
    result = ExportResult(out_dir=out_dir)
    with Staging(out_dir) as staging:
        for k, index in enumerate(indices):
            row = table[index]
            width = float(row["width"])
            if progress:
                progress(k, len(indices), f"w={format_width(width)}")
            start = time.perf_counter()
            fixed = fix_width(model, index)
            onnx_stem = artifact_stem(base, width, cfg.snap, cfg.batch, "onnx", file_precision)
            x = x_all[-cfg.gate_images:] if precision.reduced else x_all[: cfg.parity_images]
            reference = switchable_runner(src, index, batch, threads=1)(x.numpy())
            if cfg.format == "onnx":
                path = staging.path(onnx_stem + ".onnx")
                onnx.save_model(fixed, str(path))
                out = _plain_runner(path, batch)(x.numpy())
                facts: dict[str, Any] = {"runtime": "onnxruntime"}
                name = path.name
            else:
                onnx_path = staging.path(onnx_stem + ".onnx")
                onnx.save_model(fixed, str(onnx_path))
                stem = artifact_stem(base, width, cfg.snap, cfg.batch, "trt", precision)
                path = staging.path(stem + exporter.suffix)
                n_gate = min(cfg.gate_images, max(1, len(x_all) // 5))
                req = ExportRequest(static=torch.nn.Identity(), path=path, input_shape=input_shape, batch=cfg.batch,
                                    opset=cfg.opset, precision=precision, onnx_path=onnx_path,
                                    calib_images=x_all[: len(x_all) - n_gate].numpy() if precision.plan.calibrated else None,
                                    options={"workspace_mib": cfg.workspace_mib, "max_batch": cfg.max_batch,
                                             "opt_batch": cfg.opt_batch, "timing_cache": cfg.timing_cache,
                                             "int8_images": cfg.int8_images})
                facts = exporter.export(req)
                out = exporter.runner(path, req)(x.numpy())
                name = path.name
            what = f"{cfg.format} {precision} width {format_width(width)} (index {index} of {src.name})"
            if precision.reduced:
                gate = accuracy_gate(reference, out, cfg.min_cosine if cfg.min_cosine is not None
                                     else float(precision.plan.min_cosine or 0), facts.get("runtime", cfg.format),
                                     calib.kind, props.get("us3l.outputs") in ("logits", "probs"))
                enforce_gate(gate, what)
                parity: dict[str, Any] = gate.to_dict()
            else:
                atol, rtol = precision.plan.tolerance
                rec = compare(reference, out, cfg.atol if cfg.atol is not None else atol,
                              cfg.rtol if cfg.rtol is not None else rtol, facts.get("runtime", cfg.format), calib.kind)
                enforce(rec, what)
                parity = {**rec.to_dict(), "reference": f"{src.name} at width_index {index} (onnxruntime)"}
            shape = [batch or "batch", *input_shape]
            data = {
                **{k: v for k, v in _rebased(side, src.parent, out_dir).items() if held_side and k in (
                    "arch", "arch_kwargs", "untrained", "checkpoint", "divisor", "classes", "preprocess", "head", "stages")},
                "schema": SIDECAR_SCHEMA, "artifact": name, "format": cfg.format, "precision": str(precision),
                "sha256": sha256_file(path), "size_bytes": path.stat().st_size, "width": width,
                "aliases": list(row.get("aliases") or []), "channels": dict(row.get("channels") or {}),
                "macs": int(row.get("macs") or 0), "params": int(row.get("params") or 0),
                "feature_dim": int(row.get("feature_dim") or 0),
                "input": {**(side.get("input") or {}), "name": input_vi.name, "shape": shape, "dtype": "float32"}
                if held_side else {"name": input_vi.name, "shape": shape, "dtype": "float32"},
                "output": {**(side.get("output") or {}), "shape": None} if held_side else None,
                "export": {"method": "fixed", "switchable": src.name, "width_index": index,
                           "switchable_sha256": sha256_file(src)},
                "parity": parity, "calibration": None, "opset": cfg.opset, "versions": tool_versions(),
                "format_info": facts, "source_onnx": onnx_stem + ".onnx" if cfg.format == "trt" else None,
                "cache_key": None,
                "build": {"time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          "seconds": round(time.perf_counter() - start, 3), "host": platform.node()},
            }
            sidecar = Path(name).stem + ".json"
            staging.write_json(sidecar, data)
            result.artifacts.append(Artifact.from_sidecar(out_dir / sidecar, data, cached=False))
        staging.commit()
    result.seconds = time.perf_counter() - t0
    return result


def _plain_runner(path: Any, batch: int | None) -> Callable[[np.ndarray], np.ndarray]:
    from .onnx_exporter import batched_runner, ort_session

    sess = ort_session(path, threads=1)
    name = sess.get_inputs()[0].name
    return batched_runner(lambda x: np.asarray(sess.run(None, {name: x.astype(np.float32)})[0]), batch)
