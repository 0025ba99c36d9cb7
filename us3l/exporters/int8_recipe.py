"""INT8 that holds at every width: the INT8 recipe of each width chosen on held-out images.

Small widths have the fewest channels to absorb quantization error (measured on the Fashion-MNIST
task models: INT8 cost 0.6-1.0 top-1 points at widths 0.5-1.0 but 3.9 at 0.25), so one fixed
recipe does not hold everywhere. With ``--int8-recipe auto`` the exporter tries recipes in order
of expected speed and keeps the first whose outputs on the held-out gate images (never used for
calibration) stay close enough to FP32:

1. every layer INT8, calibrated with the configured method (MinMax by default), then with
   Percentile (99.999 %) and Entropy (2048 bins) ranges;
2. the same, with the most sensitive layers kept in FP32, added one group at a time: the head (the
   classifier or last linear layer), the stem (the first convolution, which sees the raw image),
   the last block (the convolutions of the last residual/inverted block before pooling).

"Close enough" (:func:`recipe_passes`): for a classifier, top-1 agreement with FP32 of at least
``min_agreement`` (0.99 by default: the accuracy of the INT8 file then differs from FP32's by at
most 1 point on those images, since an image can only change its correctness by changing its
top-1) and the cosine gate; for features, a mean cosine of at least ``min_cosine_features``.
When no recipe passes, the one closest to FP32 is kept and the ordinary INT8 gate decides.

Per-channel quantization: weights are per-channel in every recipe. Activations stay per-tensor:
ONNX Runtime's CPU INT8 kernels (QLinearConv / QLinearMatMul and the fused QDQ paths) take one
scale per activation tensor, and so does TensorRT's implicit INT8, so a per-channel activation
scale is not something either runtime can run. The sidecar records every recipe tried, the one
chosen and which layers stayed FP32 (``calibration.recipe``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RECIPE_MODES = ("auto", "fixed")
DEFAULT_MIN_AGREEMENT = 0.99
DEFAULT_MIN_COSINE_FEATURES = 0.99
SENSITIVE = ("head", "stem", "last_block")
PER_CHANNEL_ACTIVATIONS = ("not supported: ONNX Runtime's CPU INT8 kernels and TensorRT take one scale per "
                           "activation tensor; weights are per-channel")


@dataclass(frozen=True)
class Recipe:
    """One INT8 recipe: a calibration method and the layer groups kept in FP32."""

    calibration: str
    keep_fp32: tuple[str, ...] = ()


@dataclass
class RecipeRequest:
    """What the exporter needs to choose a recipe: held-out inputs and the FP32 reference on them."""

    inputs: np.ndarray
    reference: np.ndarray
    classifier: bool
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    min_cosine: float = DEFAULT_MIN_COSINE_FEATURES
    gate_cosine: float = 0.95
    calibrations: tuple[str, ...] = ("minmax", "percentile", "entropy")


@dataclass
class Trial:
    recipe: Recipe
    kept_nodes: list[str]
    mean_cosine: float
    top1_agreement: float | None
    passed: bool
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"calibration": self.recipe.calibration, "keep_fp32": list(self.recipe.keep_fp32),
                "kept_nodes": self.kept_nodes, "mean_cosine": round(self.mean_cosine, 6),
                "top1_agreement": None if self.top1_agreement is None else round(self.top1_agreement, 6),
                "passed": self.passed, "seconds": round(self.seconds, 3)}


def candidate_recipes(first: str, calibrations: tuple[str, ...]) -> list[Recipe]:
    """Recipes in the order they are tried (fastest expected first)."""
    methods = [first] + [m for m in calibrations if m != first]
    out = [Recipe(m) for m in methods]
    for n in range(1, len(SENSITIVE) + 1):
        out += [Recipe(m, SENSITIVE[:n]) for m in methods]
    return out


def sensitive_nodes(model: Any, module: Any = None) -> dict[str, list[str]]:
    """Node names of each sensitive layer group of an FP32 ONNX model.

    - ``stem``: the first Conv (in graph order) reading the graph input;
    - ``head``: Gemm/MatMul nodes after the last Conv (the classifier or the last linear layers);
    - ``last_block``: the Convs of the last block: those whose weights belong, by value, to the
      module holding the last convolution (:func:`us3l.exporters.ladder.match_initializers`), else
      the Convs after the last Add that precedes the pooling.
    """
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    groups: dict[str, list[str]] = {"stem": [], "head": [], "last_block": []}
    inputs = {i.name for i in model.graph.input}
    stem = next((i for i in convs if nodes[i].input[0] in inputs), convs[0] if convs else None)
    if stem is not None:
        groups["stem"] = [nodes[stem].name]
    last_conv = convs[-1] if convs else -1
    groups["head"] = [n.name for i, n in enumerate(nodes) if i > last_conv and n.op_type in ("Gemm", "MatMul")]
    if not convs:
        return groups
    block: list[str] = []
    if module is not None:
        from .ladder import _conv_of, match_initializers, network_tensors

        keys, _ = match_initializers(model, network_tensors(module))
        owner = {}
        for i in convs:
            found = keys.get(nodes[i].input[1])
            if found:
                owner[i] = _conv_of(found[0])
        last = owner.get(last_conv)
        if last:
            parent = last.rsplit(".", 1)[0]
            block = [nodes[i].name for i in convs if owner.get(i, "").startswith(parent + ".")]
    if not block:
        adds = [i for i, n in enumerate(nodes) if n.op_type == "Add" and i < last_conv]
        start = adds[-1] if adds else -1
        block = [nodes[i].name for i in convs if i > start]
    groups["last_block"] = [b for b in block if b not in groups["stem"]]
    return groups


def recipe_passes(gate: Any, req: RecipeRequest) -> bool:
    """Whether a recipe's outputs on the held-out images are close enough to FP32 (module doc)."""
    if not gate.passed or gate.mean_cosine < req.gate_cosine:
        return False
    if req.classifier:
        return gate.top1_agreement is not None and gate.top1_agreement >= req.min_agreement
    return gate.mean_cosine >= req.min_cosine


def choose_recipe(onnx_path: Path, calib_images: np.ndarray, out_path: Path, ranges_path: Path, first: str,
                  rr: RecipeRequest, quantize: Callable[..., dict[str, Any]], run: Callable[[Path], Callable],
                  groups: dict[str, list[str]]) -> dict[str, Any]:
    """Try :func:`candidate_recipes` until one passes; leave the chosen file at ``out_path`` and its
    ranges at ``ranges_path``.

    Args:
        quantize: ``quantize(onnx_path, images, out, ranges, method, exclude=[...], reuse_ranges=bool)``.
        run: ``run(path) -> f(x) -> outputs`` (ONNX Runtime on the written file).
        groups: :func:`sensitive_nodes` of the FP32 model.

    Returns:
        The calibration facts of the chosen recipe with a ``recipe`` record (every trial).
    """
    from .onnx_quant import accuracy_gate

    work = out_path.parent / (out_path.name + ".recipes")
    work.mkdir(exist_ok=True)
    trials: list[Trial] = []
    facts_of: dict[int, dict[str, Any]] = {}
    files: dict[int, tuple[Path, Path]] = {}
    ranges_for: dict[str, Path] = {}
    try:
        for recipe in candidate_recipes(first, rr.calibrations):
            kept = [n for g in recipe.keep_fp32 for n in groups.get(g, [])]
            if recipe.keep_fp32 and not kept:
                continue  # the group does not exist here (no head on a features file)
            if recipe.keep_fp32 and trials and [t.kept_nodes for t in trials if t.recipe.calibration == recipe.calibration][-1:] == [kept]:
                continue  # adding this group kept nothing new
            start = time.perf_counter()
            i = len(trials)
            qpath = work / f"r{i}.onnx"
            rpath = ranges_for.get(recipe.calibration)
            reuse = rpath is not None
            if rpath is None:
                rpath = ranges_for[recipe.calibration] = work / f"ranges_{recipe.calibration}.json"
            facts = quantize(onnx_path, calib_images, qpath, rpath, recipe.calibration, exclude=kept, reuse_ranges=reuse)
            out = run(qpath)(rr.inputs)
            gate = accuracy_gate(rr.reference, out, rr.gate_cosine, "onnxruntime", "real", rr.classifier)
            trial = Trial(recipe, kept, gate.mean_cosine, gate.top1_agreement, recipe_passes(gate, rr),
                          time.perf_counter() - start)
            trials.append(trial)
            facts_of[i], files[i] = facts, (qpath, rpath)
            log.info("INT8 recipe %s keep=%s: cosine %.4f agreement %s%s", recipe.calibration, list(recipe.keep_fp32),
                     gate.mean_cosine, gate.top1_agreement, " (passes)" if trial.passed else "")
            if trial.passed:
                break
        best = next((i for i, t in enumerate(trials) if t.passed), None)
        if best is None:
            best = max(range(len(trials)), key=lambda i: ((trials[i].top1_agreement or 0.0), trials[i].mean_cosine))
        qpath, rpath = files[best]
        qpath.replace(out_path)
        if Path(rpath) != Path(ranges_path):
            Path(rpath).replace(ranges_path)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    chosen = trials[best]
    facts = dict(facts_of[best])
    facts["ranges_file"] = Path(ranges_path).name
    facts["method"] = chosen.recipe.calibration
    facts["recipe"] = {"mode": "auto", "chosen": chosen.to_dict(), "passed": chosen.passed,
                       "criterion": ({"top1_agreement": rr.min_agreement} if rr.classifier
                                     else {"mean_cosine": rr.min_cosine}),
                       "held_out_images": len(rr.inputs), "kept_fp32": chosen.kept_nodes,
                       "groups": {k: v for k, v in groups.items()},
                       "per_channel_activations": PER_CHANNEL_ACTIVATIONS,
                       "tried": [t.to_dict() for t in trials]}
    return facts


def recipe_request_dict(rr: RecipeRequest) -> dict[str, Any]:
    """The request without its arrays (for logs)."""
    d = asdict(rr)
    d.pop("inputs")
    d.pop("reference")
    return d
