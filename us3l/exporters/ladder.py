"""Ladders by substitution: translate one width to ONNX, derive every other width from that graph.

torch's ONNX translation costs seconds per width (the dynamo exporter ~2-5 s for a CIFAR
ResNet-18 on one core) while the graph's topology is the same at every width of a universally
slimmable network: only the tensors' sizes and values change. A ladder therefore translates one
width (the *template*) and, for each further width, puts that width's tensors into a copy of the
template graph.

How a template is mapped (:func:`build_template`), all checked against values, not assumed:

- **Float initializers** are matched by value against the tensors the static network at the
  template width can produce (:func:`network_tensors`): every parameter and buffer, each linear
  weight transposed (MatMul form), and every convolution folded with the BatchNorm that follows
  it (``W * gamma / sqrt(var + eps)`` and ``beta - mean * gamma / sqrt(var + eps)``, what the
  exporters' optimisers write). An initializer that several tensors reproduce is *ambiguous*; it
  is substituted only at widths where all of them still agree. A float initializer that matches
  nothing and has a width-dependent dimension stops the substitution (named).
- **Integer constants** (Reshape shapes, Slice ends, ...) are matched elementwise against the
  channel counts of the network's layers (:func:`network_counts`: conv/linear inputs, outputs and
  groups, BN and LayerNorm sizes, plus the fixed batch and input size). An element equal to
  counts that all move together is rewritten to their value at the new width; one equal to counts
  that move differently is ambiguous at the widths where they part (that width is then traced).
- **Conv ``group`` attributes** follow the convolution their weight maps to.
- **Graph output shapes** come from the PyTorch network at the new width.

Each substituted model then goes through ONNX shape inference, the full ``onnx.checker`` check,
the same simplification (onnxsim) as a translated one, and must keep the template's operator list;
the pipeline's parity gate runs at every width as usual. Any failure is a
:class:`SubstitutionError` whose message is the reason the pipeline records when it falls back to
a full translation of that width (sidecar ``export.fallback``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from us3l.core.errors import ExportError

log = logging.getLogger(__name__)

#: relative tolerance (times the tensor's largest magnitude) of a value match between an ONNX
#: initializer and a network tensor: float32 folding by another program differs by ~1e-7.
MATCH_RTOL = 1e-4
FOLD_SUFFIXES = (":fold_w", ":fold_b")


class SubstitutionError(ExportError):
    """A width cannot be derived from the template graph; the message is the named reason."""


# ----------------------------------------------------------------------------- network side


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]:
    """(conv name, conv, bn name, bn) for each convolution directly followed, in registration
    order, by a BatchNorm of its output size (conv1/bn1, Sequential(conv, bn, act), downsample.0/1)."""
    mods = [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    pairs = []
    for (n1, m1), (n2, m2) in itertools.pairwise(mods):
        if isinstance(m1, nn.Conv2d) and isinstance(m2, nn.BatchNorm2d) and m2.num_features == m1.out_channels:
            pairs.append((n1, m1, n2, m2))
    return pairs


def _bn_tensors(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(gamma, beta, mean, var, eps) of an eval-mode BatchNorm in float64."""
    gamma, beta, mean, var = (getattr(bn, k) for k in ("weight", "bias", "running_mean", "running_var"))
    if not all(isinstance(t, torch.Tensor) for t in (gamma, beta, mean, var)):
        raise SubstitutionError(f"BatchNorm {type(bn).__name__} has no affine parameters or running statistics")
    return gamma.double(), beta.double(), mean.double(), var.double(), float(getattr(bn, "eps", 1e-5))


def fold_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """The convolution's weight and bias with ``bn`` (eval statistics) folded in (float32)."""
    with torch.no_grad():
        gamma, beta, mean, var, eps = _bn_tensors(bn)
        scale = gamma / torch.sqrt(var + eps)
        w = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
        b0 = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
        b = (b0 - mean) * scale + beta
    return w.float().numpy(), b.float().numpy()


def bn_scale_shift(bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """``(gamma / sqrt(var + eps), beta - mean * scale)`` of an eval-mode BatchNorm (float32)."""
    with torch.no_grad():
        gamma, beta, mean, var, eps = _bn_tensors(bn)
        scale = gamma / torch.sqrt(var + eps)
        shift = beta - mean * scale
    return scale.float().numpy(), shift.float().numpy()


def network_tensors(module: nn.Module) -> dict[str, np.ndarray]:
    """Every float tensor an exporter may write for ``module`` (a plain static network), by key.

    Keys: ``name`` (parameter or buffer), ``name.T`` (2-D weights transposed: MatMul form) and
    ``conv+bn:fold_w`` / ``conv+bn:fold_b`` (a convolution with its BatchNorm folded in).
    """
    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            a = t.detach().cpu().float().numpy()
            out[name] = a
            if a.ndim == 2:
                out[name + ".T"] = np.ascontiguousarray(a.T)
    for cn, conv, bnn, bn in _conv_bn_pairs(module):
        w, b = fold_conv_bn(conv, bn)
        out[f"{cn}+{bnn}:fold_w"], out[f"{cn}+{bnn}:fold_b"] = w, b
    return out


def network_counts(module: nn.Module, batch: int | None = None, input_size: int | None = None) -> dict[str, int]:
    """The integers a width changes (channel counts per layer) and a few it never changes (the
    fixed batch, the input size, conv inputs that are not slimmed), by key."""
    counts: dict[str, int] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            counts.update({f"{name}.in": m.in_channels, f"{name}.out": m.out_channels, f"{name}.groups": m.groups})
        elif isinstance(m, nn.Linear):
            counts.update({f"{name}.in": m.in_features, f"{name}.out": m.out_features})
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            counts[f"{name}.num"] = m.num_features
        elif isinstance(m, nn.LayerNorm):
            counts[f"{name}.num"] = int(m.normalized_shape[-1])
    if batch:
        counts["@batch"] = int(batch)
    if input_size:
        counts["@input_size"] = int(input_size)
    return counts


def slimmable_counts(model: nn.Module, width: float, divisor: int) -> dict[str, int]:
    """:func:`network_counts` of the static slice at ``width``, read from the slimmable network
    without slicing it (for choosing a template among many widths)."""
    from us3l.core.context import use_width
    from us3l.core.layers import Slimmable

    counts: dict[str, int] = {}
    with use_width(model, width, divisor):
        for name, m in model.named_modules():
            if isinstance(m, Slimmable) and hasattr(m, "active_channels"):
                cin, cout = m.active_channels()
                if isinstance(m, nn.Conv2d):
                    groups = cin if getattr(m, "depthwise", False) else 1
                    counts.update({f"{name}.in": cin, f"{name}.out": cout, f"{name}.groups": groups})
                elif isinstance(m, nn.Linear):
                    counts.update({f"{name}.in": cin, f"{name}.out": cout})
                else:
                    counts[f"{name}.num"] = cout
            elif isinstance(m, nn.Conv2d):
                counts.update({f"{name}.in": m.in_channels, f"{name}.out": m.out_channels, f"{name}.groups": m.groups})
            elif isinstance(m, nn.Linear):
                counts.update({f"{name}.in": m.in_features, f"{name}.out": m.out_features})
            elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                counts[f"{name}.num"] = m.num_features
            elif isinstance(m, nn.LayerNorm):
                counts[f"{name}.num"] = int(m.normalized_shape[-1])
    return counts


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    if not a.size:
        return True
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    scale = max(float(np.abs(flat_b).max()), 1e-6)
    tol = MATCH_RTOL * scale
    probe = flat_a[:64] - flat_b[:64]  # most candidates differ in their first entries: reject those cheaply
    if float(np.abs(probe).max()) > tol:
        return False
    return bool(float(np.abs(flat_a - flat_b).max()) <= tol)


# ----------------------------------------------------------------------------- ONNX side


def _float_inits(model: Any) -> list[Any]:
    import onnx

    return [i for i in model.graph.initializer if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)]


def _int_sites(model: Any) -> list[tuple[str, str, np.ndarray]]:
    """``(kind, name, values)`` of every integer constant: initializers and Constant nodes (top level)."""
    import onnx
    from onnx import numpy_helper

    ints = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    sites = [("init", i.name, numpy_helper.to_array(i)) for i in model.graph.initializer if i.data_type in ints]
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value" and n.attribute[0].t.data_type in ints:
            sites.append(("const", n.output[0], numpy_helper.to_array(n.attribute[0].t)))
    return sites


def ops_of(model: Any) -> dict[str, int]:
    """Operator counts of a model's main graph (the comparison of a substituted and a traced file)."""
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


@dataclass
class Template:
    """A translated width and how each of its constants follows the network (see the module doc).

    Attributes:
        width: the template's width.
        skeleton: the model without its float initializers (copied per width).
        float_keys: initializer name -> network tensor keys reproducing it (one unless ambiguous).
        fixed_floats: initializers kept as they are (constants of the graph: epsilons, scales...).
        int_keys: integer constant name -> per-element count keys (empty list: a fixed element).
        conv_groups: Conv node index -> key of the count giving its ``group`` at a width.
        ops: the template's operator counts.
        seconds: time spent mapping.
    """

    width: float
    skeleton: Any
    float_keys: dict[str, list[str]]
    fixed_floats: dict[str, Any]
    int_keys: dict[str, list[list[str]]]
    conv_groups: dict[int, str]
    ops: dict[str, int]
    counts: dict[str, int]
    order: list[str] = field(default_factory=list)  # initializer order of the template
    ints: dict[str, np.ndarray] = field(default_factory=dict)  # integer constants' template values
    int_kinds: dict[str, str] = field(default_factory=dict)  # "init" or "const" (a Constant node)
    seconds: float = 0.0


def match_initializers(model: Any, tensors: dict[str, np.ndarray]) -> tuple[dict[str, list[str]], list[Any]]:
    """``({initializer name: network tensor keys reproducing it}, [unmatched float initializers])``.

    Keys are ordered so the interpretation the exporter's name suggests comes first (folded
    convolutions are named after the convolution).
    """
    from onnx import numpy_helper

    by_shape: dict[tuple[int, ...], list[str]] = {}
    for k, a in tensors.items():
        by_shape.setdefault(tuple(a.shape), []).append(k)
    keys_of: dict[str, list[str]] = {}
    unmatched = []
    for init in _float_inits(model):
        arr = numpy_helper.to_array(init)
        keys = [k for k in by_shape.get(tuple(arr.shape), []) if _close(arr, tensors[k])]
        if keys:
            keys_of[init.name] = sorted(keys, key=lambda k: (not _names_agree(init.name, k), k))
        else:
            unmatched.append(init)
    return keys_of, unmatched


def build_template(model: Any, module: nn.Module, width: float, batch: int | None, input_size: int) -> Template:
    """Map a translated model (its metadata is ignored) onto ``module``, the network it was translated from.

    Raises:
        SubstitutionError: an initializer with a width-dependent shape matches no network tensor.
    """
    import onnx

    start = time.perf_counter()
    tensors = network_tensors(module)
    counts = network_counts(module, batch, input_size)
    float_keys, unmatched = match_initializers(model, tensors)
    fixed: dict[str, Any] = {}
    count_values = set(counts.values()) - {0, 1}
    for init in unmatched:
        if any(int(d) in count_values and int(d) > 1 for d in init.dims) and int(np.prod(init.dims)) > 1:
            raise SubstitutionError(f"initializer {init.name} (shape {list(init.dims)}) matches no tensor of the "
                                    f"network at width {width:g}; its shape may depend on the width")
        fixed[init.name] = onnx.TensorProto()
        fixed[init.name].CopyFrom(init)
    by_value: dict[int, list[str]] = {}
    for k, v in counts.items():
        by_value.setdefault(int(v), []).append(k)
    int_keys: dict[str, list[list[str]]] = {}
    ints: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for kind, name, values in _int_sites(model):
        flat = np.atleast_1d(values).reshape(-1)
        int_keys[name] = [by_value.get(int(v), []) if int(v) > 1 else [] for v in flat]
        ints[name], kinds[name] = values, kind
    conv_groups: dict[int, str] = {}
    conv_names = {n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    for i, node in enumerate(model.graph.node):
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if group <= 1 or len(node.input) < 2:
            continue
        keys = float_keys.get(node.input[1], [])
        conv = next((_conv_of(k) for k in keys if _conv_of(k) in conv_names), None)
        if conv is None:
            raise SubstitutionError(f"grouped convolution {node.name or i} has a weight that maps to no convolution")
        conv_groups[i] = f"{conv}.groups"
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    order = [i.name for i in skeleton.graph.initializer]
    keep = [i for i in skeleton.graph.initializer if i.name not in float_keys and i.name not in fixed and i.name not in ints]
    del skeleton.graph.initializer[:]
    skeleton.graph.initializer.extend(keep)
    del skeleton.metadata_props[:]
    t = Template(width=width, skeleton=skeleton, float_keys=float_keys, fixed_floats=fixed, int_keys=int_keys,
                 conv_groups=conv_groups, ops=ops_of(model), counts=counts, order=order, ints=ints, int_kinds=kinds)
    t.seconds = time.perf_counter() - start
    log.info("ladder template at width %g: %d tensors mapped (%d ambiguous), %d fixed, %d integer constants (%.2fs)",
             width, len(float_keys), sum(len(v) > 1 for v in float_keys.values()), len(fixed), len(ints), t.seconds)
    return t


def _conv_of(key: str) -> str:
    """The module name a tensor key belongs to (``layer1.0.conv1+layer1.0.bn1:fold_w`` -> ``layer1.0.conv1``)."""
    if "+" in key:
        return key.split("+", 1)[0]
    base = key.removesuffix(".T")
    return base.rsplit(".", 1)[0]


def _names_agree(init_name: str, key: str) -> bool:
    return init_name.split(".weight")[0].split(".bias")[0] == _conv_of(key) or init_name == key


def substitute(t: Template, module: nn.Module, width: float, batch: int | None, input_size: int,
               output_shapes: list[tuple[int, ...]]) -> Any:
    """The template graph with ``module``'s tensors (the static network at ``width``).

    Args:
        t: the template.
        module: the plain network at ``width`` (the same deploy wrapper the template was built from).
        width: its width (for messages).
        batch: the fixed batch or None (dynamic; the first output axis stays symbolic).
        input_size: the input side.
        output_shapes: the network's output shapes at ``width`` (batch axis first), in graph-output order.

    Returns:
        The unsimplified, unchecked ``onnx.ModelProto`` (see :func:`finish`).

    Raises:
        SubstitutionError: the named reason this width cannot be derived from the template.
    """
    import onnx
    from onnx import numpy_helper

    tensors = network_tensors(module)
    counts = network_counts(module, batch, input_size)
    missing = sorted({k for keys in t.float_keys.values() for k in keys} - set(tensors))
    if missing:
        raise SubstitutionError(f"the network at width {width:g} has no tensor {missing[0]} (another structure)")
    model = onnx.ModelProto()
    model.CopyFrom(t.skeleton)
    new: dict[str, Any] = {}
    for name, keys in t.float_keys.items():
        value = tensors[keys[0]]
        for other in keys[1:]:
            if not _close(tensors[other], value):
                raise SubstitutionError(f"initializer {name} is reproduced by {keys[0]} and {other} at width "
                                        f"{t.width:g}, which differ at width {width:g}")
        new[name] = numpy_helper.from_array(value, name)
    for name, keys_per_el in t.int_keys.items():
        old = np.asarray(t.ints[name])
        flat = np.atleast_1d(old).reshape(-1).copy()
        for j, keys in enumerate(keys_per_el):
            if not keys:
                continue
            targets = {counts[k] for k in keys if k in counts}
            if len(targets) != 1 or any(k not in counts for k in keys):
                raise SubstitutionError(f"integer constant {name} element {int(flat[j])} stands for counts "
                                        f"{', '.join(sorted(keys)[:4])} which differ at width {width:g}")
            flat[j] = targets.pop()
        value = flat.reshape(old.shape).astype(old.dtype)
        if t.int_kinds[name] == "init":
            new[name] = numpy_helper.from_array(value, name)
        else:
            for node in model.graph.node:
                if node.op_type == "Constant" and node.output[0] == name:
                    node.attribute[0].t.CopyFrom(numpy_helper.from_array(value, ""))
    for name, init in t.fixed_floats.items():
        new[name] = init
    for i, key in t.conv_groups.items():
        node = model.graph.node[i]
        for a in node.attribute:
            if a.name == "group":
                a.i = int(counts[key])
    kept = {i.name: i for i in model.graph.initializer}
    del model.graph.initializer[:]
    model.graph.initializer.extend(new[n] if n in new else kept[n] for n in t.order if n in new or n in kept)
    if len(output_shapes) != len(model.graph.output):
        raise SubstitutionError(f"the network at width {width:g} has {len(output_shapes)} outputs, the template "
                                f"{len(model.graph.output)}")
    for out, shape in zip(model.graph.output, output_shapes):
        dims = out.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise SubstitutionError(f"output {out.name} has rank {len(shape)} at width {width:g}, {len(dims)} in the template")
        for j, (d, s) in enumerate(zip(dims, shape)):
            if j == 0 and not batch:
                continue
            if d.HasField("dim_value") or not d.dim_param:
                d.dim_value = int(s)
    del model.graph.value_info[:]
    return model


def finish(model: Any, simplify: bool, template_ops: dict[str, int], drop_whole_slices: bool = True) -> Any:
    """Shape inference, the same simplification as a translated model, the operator check.

    ``drop_whole_slices``: remove Slices that keep their whole input (:func:`drop_identity_slices`),
    as torch's dynamo translation does; the legacy TorchScript translation keeps them.

    Raises:
        SubstitutionError: shape inference failed, onnxsim refused, or the operators changed.
    """
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and others
        raise SubstitutionError(f"shape inference failed: {str(exc).splitlines()[0][:160]}") from None
    dropped = drop_identity_slices(model) if drop_whole_slices and template_ops.get("Slice") else 0
    if dropped:
        template_ops = dict(template_ops)
        template_ops["Slice"] = template_ops.get("Slice", 0) - dropped
        template_ops = {k: v for k, v in template_ops.items() if v}
    if simplify:
        from .onnx_graph import simplify_onnx

        try:
            model = simplify_onnx(model)
        except Exception as exc:
            raise SubstitutionError(f"simplification failed: {str(exc).splitlines()[0][:160]}") from None
    ops = ops_of(model)
    if ops != template_ops:
        diff = {k: (template_ops.get(k, 0), ops.get(k, 0)) for k in set(ops) | set(template_ops)
                if ops.get(k, 0) != template_ops.get(k, 0)}
        raise SubstitutionError(f"operators differ from the template after simplification: {diff}")
    return model


def drop_identity_slices(model: Any) -> int:
    """Remove Slice nodes that keep their whole input (start 0, step 1, end at or past the axis
    size, all constant; input shape known from shape inference): a translated graph never has
    them (torch drops ``x[..., :n]`` when ``n`` is the whole axis), a substituted one would at
    the width where a sliced input becomes whole (the ViT's linears at width 1.0).

    Returns:
        The number of nodes removed (their consumers read the Slice's input instead).
    """
    from onnx import numpy_helper

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    shapes: dict[str, list[int | None]] = {}
    for vi in list(model.graph.value_info) + list(model.graph.input):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    outputs = {o.name for o in model.graph.output}
    removed = []
    for node in model.graph.node:
        if node.op_type != "Slice" or node.output[0] in outputs or len(node.input) < 3:
            continue
        shape = shapes.get(node.input[0])
        parts = [consts.get(n) if n else None for n in list(node.input[1:5]) + [""] * (5 - len(node.input))]
        starts, ends, axes, steps = parts
        if shape is None or starts is None or ends is None or (len(node.input) > 3 and node.input[3] and axes is None) \
                or (len(node.input) > 4 and node.input[4] and steps is None):
            continue
        axes = axes if axes is not None else np.arange(len(starts))
        steps = steps if steps is not None else np.ones(len(starts), dtype=np.int64)
        whole = True
        for s, e, a, st in zip(starts.tolist(), ends.tolist(), axes.tolist(), steps.tolist()):
            size = shape[a] if -len(shape) <= a < len(shape) else None
            if s != 0 or st != 1 or size is None or e < size:
                whole = False
        if whole:
            removed.append(node)
    for node in removed:
        src, dst = node.input[0], node.output[0]
        for other in model.graph.node:
            for j, name in enumerate(other.input):
                if name == dst:
                    other.input[j] = src
        model.graph.node.remove(node)
    return len(removed)


def choose_template(widths: Iterable[float], counts_at: Any) -> float:
    """The width whose channel counts identify every other width's counts without ambiguity
    (each value it has is shared only by counts that move together at every other width);
    the widest such width, else the widest.

    Args:
        widths: the distinct widths of the ladder.
        counts_at: ``counts_at(width) -> {key: count}`` (:func:`network_counts` of the static network).
    """
    ws = sorted(set(widths), reverse=True)
    table = {w: counts_at(w) for w in ws}
    for w0 in ws:
        groups: dict[int, list[str]] = {}
        for k, v in table[w0].items():
            groups.setdefault(v, []).append(k)
        clean = all(len({table[w].get(k) for k in keys}) == 1 for keys in groups.values() for w in ws if w != w0)
        if clean:
            return w0
    return ws[0]


@dataclass
class Ladder:
    """Substitution state shared by the widths of one export (``ExportRequest.options["ladder"]``).

    The first width the exporter translates becomes the template; later widths are substituted.
    ``disabled`` holds the reason when the template could not be mapped (every width is then
    translated).
    """

    template: Template | None = None
    disabled: str | None = None
    substituted: int = 0
    fallbacks: list[tuple[float, str]] = field(default_factory=list)

    def adopt(self, model: Any, module: nn.Module, width: float, batch: int | None, input_size: int) -> None:
        """Make a freshly translated model the template (or record why it cannot be one)."""
        if self.template is not None or self.disabled is not None:
            return
        try:
            self.template = build_template(model, module, width, batch, input_size)
        except SubstitutionError as exc:
            self.disabled = str(exc)
            log.warning("ladder substitution off: %s", exc)
