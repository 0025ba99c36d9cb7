"""Task models: a slimmable backbone plus a classifier head, with what a deployed model needs.

A *task checkpoint* is an ordinary :class:`~us3l.core.checkpoint.Checkpoint` (the backbone in
``model``, its per-width BN bank in ``bn_bank``) whose ``extra`` carries:

- ``extra["head"] = {"weight": (K, D_max), "bias": (K,)}``: one **shared, input-slimmed** linear
  head (``us3l finetune``, with or without ``--freeze-backbone``). At width ``w`` it reads the first
  ``feature_dim(w)`` features, as the slimmable ``fc`` of the architecture does (MobileNetV2's
  feature dimension is 1280 at every width, so its head is never sliced);
- or ``extra["heads"] = {"0.25": {"weight": (K, D_w), "bias": (K,)}, ...}``: one head per width
  (``us3l finetune --head per-width``, the default, one per width of the evaluation ladder; or the
  linear probes ``us3l eval --method linear`` trains, standardisation folded into the weights).
  A width between two heads uses **the nearer head** (:func:`choose_head`; a tie goes to the
  narrower one), which reads the first ``min(D_w, D_head)`` features: a wider head ignores its
  extra inputs, a narrower one the width's extra features. Exports record the choice in their
  sidecar (``head``);
- ``extra["task"]``: ``classes`` (names, index = class id), ``normalization`` (``mean``/``std``),
  ``input_size``, ``preprocess`` (:func:`us3l.core.preprocess.preprocessing_for`), ``dataset``,
  ``head`` (``shared`` | ``per-width``), ``trained_by`` and the parent checkpoint's hash.

Nothing here imports another room.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .width import format_width, round_width


def class_names(spec: Any) -> list[str]:
    """Class names of a dataset (index = label): Fashion-MNIST's and image folders' names, digits
    ``"0".."9"``, CIFAR ``"0".."N-1"`` (the pickles carry no names we read)."""
    from . import data

    if spec.name == "fashion-mnist":
        return list(data.FASHION_MNIST_CLASSES)
    if spec.name == "imagefolder":
        return list(data._folder_classes(data._require_root(spec)))
    return [str(i) for i in range(data.num_classes(spec))]


def task_info(spec: Any, parent_hash: str, head: str, trained_by: str, input_size: int) -> dict[str, Any]:
    """``extra["task"]`` for a classifier trained on dataset ``spec``."""
    from .data import dataset_stats
    from .preprocess import preprocessing_for

    mean, std = dataset_stats(spec)
    return {"classes": class_names(spec), "normalization": {"mean": list(mean), "std": list(std)},
            "input_size": int(input_size), "preprocess": preprocessing_for(spec, input_size),
            "dataset": spec.to_dict(), "head": head, "trained_by": trained_by, "parent": parent_hash}


def has_head(ckpt: Any) -> bool:
    """True when ``ckpt`` carries a classifier (shared or per-width heads)."""
    extra = ckpt.extra or {}
    return bool(extra.get("head")) or bool(extra.get("heads"))


def nearest_head_width(width: float, head_widths: list[float]) -> float:
    """The head width used at ``width``: itself if it has a head, else the nearer one (a tie goes to
    the narrower head, whose inputs the width has).

    Examples:
        >>> nearest_head_width(0.3, [0.25, 0.5, 0.75, 1.0]), nearest_head_width(0.375, [0.25, 0.5])
        (0.25, 0.25)
    """
    if not head_widths:
        raise ValueError("no head widths")
    w = round_width(width)
    return min(sorted(round_width(h) for h in head_widths), key=lambda h: (abs(h - w), h))


def choose_head(ckpt: Any, width: float) -> dict[str, Any]:
    """Which classifier serves ``width``: ``{"kind": "shared"|"per-width", "width": head width key or
    None, "rule": "shared"|"exact"|"nearest"}`` (what export sidecars record).

    Raises:
        CheckpointError: the checkpoint has no classifier.
    """
    extra = ckpt.extra or {}
    if extra.get("head"):
        return {"kind": "shared", "width": None, "rule": "shared"}
    if extra.get("heads"):
        keys = {round_width(float(k)): k for k in extra["heads"]}
        chosen = nearest_head_width(width, list(keys))
        return {"kind": "per-width", "width": keys[chosen],
                "rule": "exact" if abs(chosen - round_width(width)) < 1e-9 else "nearest"}
    raise CheckpointError("checkpoint has no classifier head; fine-tune it ('us3l finetune') or train a probe "
                          "('us3l eval --method linear'), or pass --include-head")


def head_tensors(ckpt: Any, width: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight, bias)`` of the classifier serving ``width`` (:func:`choose_head`; a shared head is
    returned whole: the caller slices its inputs to the width's feature dimension).

    Raises:
        CheckpointError: no head, or a malformed one.
    """
    extra = ckpt.extra or {}
    if extra.get("head"):
        head = extra["head"]
    elif extra.get("heads"):
        head = extra["heads"][choose_head(ckpt, width)["width"]]
    else:
        raise CheckpointError("checkpoint has no classifier head; fine-tune it ('us3l finetune') or train a probe "
                              "('us3l eval --method linear'), or pass --include-head")
    w, b = head.get("weight"), head.get("bias")
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not isinstance(b, torch.Tensor) or b.shape != (w.shape[0],):
        raise CheckpointError("checkpoint's classifier head is malformed (needs weight K x D and bias K)")
    return w, b


def static_head(ckpt: Any, width: float, feature_dim: int) -> nn.Linear:
    """The plain ``nn.Linear`` the classifier is at ``width``, taking the width's ``feature_dim`` features.

    A shared head's inputs are sliced to ``feature_dim``. A per-width head of another width (the
    nearer one, :func:`choose_head`) reads the first ``min(feature_dim, D_head)`` features; weights
    of features it does not read are zero.

    Raises:
        CheckpointError: see :func:`head_tensors`, or a shared head narrower than the features.
    """
    w, b = head_tensors(ckpt, width)
    shared = bool((ckpt.extra or {}).get("head"))
    if shared and w.shape[1] < feature_dim:
        raise CheckpointError(f"classifier head takes {w.shape[1]} features; width {format_width(width)} gives {feature_dim}")
    m = min(int(w.shape[1]), int(feature_dim))
    head = nn.Linear(feature_dim, w.shape[0])
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, :m].copy_(w[:, :m])
        head.bias.copy_(b)
    return head.eval()


def sliced_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Logits of a linear head on the first ``min(D, D_head)`` features (the per-width head rule)."""
    m = min(int(features.shape[1]), int(weight.shape[1]))
    return torch.nn.functional.linear(features[:, :m], weight[:, :m], bias)


def head_digest(ckpt: Any) -> str | None:
    """sha256 of the classifier's tensors (None without one): part of export cache keys."""
    from .state import state_hash

    extra = ckpt.extra or {}
    if extra.get("head"):
        return state_hash(dict(extra["head"]))
    if extra.get("heads"):
        return state_hash({f"{w}.{k}": v for w, h in extra["heads"].items() for k, v in h.items()})
    return None


def classifier_state_hash(ckpt: Any) -> str:
    """sha256 of the classifier's state (backbone tensors and head tensors together): what a PyTorch
    ``top1`` row of ``accuracy.json`` was measured on.

    Raises:
        CheckpointError: no head.
    """
    from .state import state_hash

    extra = ckpt.extra or {}
    if extra.get("head"):
        head = {f"head.{k}": v for k, v in extra["head"].items()}
    elif extra.get("heads"):
        head = {f"heads.{w}.{k}": v for w, h in extra["heads"].items() for k, v in h.items()}
    else:
        raise CheckpointError("checkpoint has no classifier head")
    return state_hash({**{f"model.{k}": v for k, v in ckpt.model.items()}, **head})


def state_hashes(ckpt: Any) -> dict[str, str]:
    """``{outputs: sha256 of the PyTorch state measured}``: ``features`` (the backbone's content
    hash) and, with a head, ``logits`` and ``probs`` (:func:`classifier_state_hash`)."""
    out = {"features": str(ckpt.content_hash)}
    if has_head(ckpt):
        out["logits"] = out["probs"] = classifier_state_hash(ckpt)
    return out


def build_classifier(ckpt: Any) -> nn.Module:
    """The slimmable backbone with its shared head as the architecture's ``fc`` (``forward`` gives
    logits at the current width).

    Raises:
        CheckpointError: no shared head (per-width probes have no slimmable form).
    """
    extra = ckpt.extra or {}
    if not extra.get("head"):
        raise CheckpointError("checkpoint has no shared classifier head (per-width probe heads cannot be slimmed)")
    w, b = head_tensors(ckpt, 1.0)
    model = ckpt.build_model(num_classes=int(w.shape[0]))
    fc = model.fc
    if tuple(fc.weight.shape) != tuple(w.shape):
        raise CheckpointError(f"classifier head has shape {tuple(w.shape)}, {ckpt.arch}'s fc needs {tuple(fc.weight.shape)}")
    with torch.no_grad():
        fc.weight.copy_(w)
        fc.bias.copy_(b)
    return model


def classes_of(ckpt: Any) -> list[str]:
    """The class names of a task checkpoint (``[]`` without task information)."""
    return list(((ckpt.extra or {}).get("task") or {}).get("classes") or [])


def per_width_key(width: float) -> str:
    return format_width(round_width(width))
