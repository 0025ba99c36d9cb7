"""Import checkpoints written by the reference US3L implementation (``us3l import``).

A reference SSL checkpoint is ``torch.save({"epoch", "arch", "state_dict", "optimizer"})`` whose
``state_dict`` holds the online backbone under ``module.encoder_q.`` beside the momentum copy
(``module.encoder_k.``), the predictors (``module.predictor*``) and, with feature distillation,
``module.proj_conv*`` (docs/method.md §14.3). Our backbone keys follow the reference
layout, so the import is: keep ``module.encoder_q.*``, drop its ``fc.*`` (the projector's first
layer, not the backbone), check every remaining key and shape against our architecture, and
save our :class:`~us3l.core.checkpoint.Checkpoint` (method ``"reference"``) atomically.

BN running statistics are optional (SSL training does not track them). A checkpoint written by
the reference BN-calibration step at width ``w`` holds ``w``'s statistics in the first ``c(w)``
entries of each BN buffer; ``calibrated_width=w`` copies exactly those entries into the bank at
``w``, so exporting ``w`` uses them unchanged and reproduces the reference network's features.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from us3l.core.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# Reference builder names (``args.arch``) -> our architecture names.
REFERENCE_ARCHS = {
    "us_cifar_resnet18": "us_resnet18_cifar", "us_cifar_resnet50": "us_resnet50_cifar",
    "us_resnet18": "us_resnet18", "us_resnet50": "us_resnet50",
    "us_cifar_mobilenetv2": "us_mobilenet_v2_cifar", "us_mobilenetv2": "us_mobilenet_v2",
}
SUPPORTED = tuple(sorted(set(REFERENCE_ARCHS.values())))
ONLINE_PREFIXES = ("module.encoder_q.", "encoder_q.")
DROPPED_GROUPS = ("encoder_k.", "predictor", "proj_conv")  # momentum encoder, predictors, distillation convs
OPTIONAL_SUFFIXES = (".running_mean", ".running_var", ".num_batches_tracked")


@dataclass(frozen=True)
class ImportConfig:
    """``us3l import`` options.

    Args:
        source: the reference checkpoint (``*.pth.tar``).
        out: where to write our checkpoint.
        arch: our architecture name (default: detected from key shapes / the file's ``arch``).
        calibrated_width: the width the file's BN statistics were calibrated at, if any.
    """

    source: str
    out: str
    arch: str | None = None
    calibrated_width: float | None = None


def read_reference(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The online backbone tensors (prefix stripped, projector ``fc.*`` dropped) and file info.

    Raises:
        CheckpointError: unreadable file, no ``state_dict``, no ``encoder_q`` keys, or keys that map nowhere.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"reference checkpoint {path} does not exist or is not a file")
    from us3l.core.checkpoint import load_plain

    data = load_plain(path, "reference checkpoint")
    state = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} has no 'state_dict'; valid: a reference US3L checkpoint (epoch, arch, state_dict)")
    online: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    unmappable: list[str] = []
    for key, value in state.items():
        prefix = next((p for p in ONLINE_PREFIXES if key.startswith(p)), None)
        if prefix is not None:
            sub = key[len(prefix):]
            if sub.startswith("fc."):
                dropped["encoder_q.fc"] = dropped.get("encoder_q.fc", 0) + 1
            else:
                online[sub] = value
            continue
        bare = key[len("module."):] if key.startswith("module.") else key
        group = next((g for g in DROPPED_GROUPS if bare.startswith(g)), None)
        if group is None:
            unmappable.append(key)
        else:
            dropped[group.rstrip(".")] = dropped.get(group.rstrip("."), 0) + 1
    if unmappable:
        raise CheckpointError(f"{path}: {len(unmappable)} key(s) cannot be mapped: {', '.join(unmappable[:8])}"
                              f"{' ...' if len(unmappable) > 8 else ''}")
    if not online:
        raise CheckpointError(f"{path} holds no 'module.encoder_q.*' keys; valid: a reference US3L SSL checkpoint")
    info = {"epoch": _whole_number(data.get("epoch", 0), "epoch", path),
            "arch": data.get("arch") if isinstance(data.get("arch"), str) else None, "dropped": dropped}
    return online, info


def _whole_number(value: Any, field: str, path: Path) -> int:
    """A numeric field of the file (``epoch``) as an int, or one line naming the field and its value."""
    if value is None:
        return 0
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or int(value) != value:
        raise CheckpointError(f"reference checkpoint {path}: field {field!r} is {value!r}; valid: a whole number >= 0 "
                              "(the number of epochs trained)")
    return int(value)


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Our state-dict keys and shapes for ``arch`` (built on the meta device: no memory, no init cost)."""
    from us3l.core.models import get_model

    with torch.device("meta"):
        model = get_model(arch)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def mismatches(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> tuple[list, list, list]:
    """(missing, unexpected, mis-shaped) keys; BN running buffers may be missing."""
    missing = sorted(k for k in shapes if k not in state and not k.endswith(OPTIONAL_SUFFIXES))
    unexpected = sorted(k for k in state if k not in shapes)
    bad = sorted(f"{k} {tuple(state[k].shape)}!={shapes[k]}" for k in state if k in shapes and tuple(state[k].shape) != shapes[k])
    return missing, unexpected, bad


def detect_arch(state: dict[str, torch.Tensor], reference_arch: str | None = None) -> str:
    """Our architecture whose keys and shapes match ``state``.

    The file's ``arch`` field (a reference builder name) decides when present. Otherwise the key
    shapes must fit exactly one architecture: MobileNetV2's CIFAR and ImageNet variants have
    identical shapes (they differ in strides), so those need ``--arch``.

    Raises:
        CheckpointError: nothing matches, or the match is ambiguous.
    """
    if reference_arch in REFERENCE_ARCHS:  # the file names its builder: trust it, validate after
        return REFERENCE_ARCHS[reference_arch]
    diffs = {a: mismatches(state, expected_shapes(a)) for a in SUPPORTED}
    matches = [a for a, d in diffs.items() if not any(d)]
    if len(matches) == 1:
        return matches[0]
    if not matches:  # report against the closest architecture
        closest = min(diffs, key=lambda a: sum(len(d) for d in diffs[a]))
        raise CheckpointError(f"the backbone keys fit none of {', '.join(SUPPORTED)}; closest {closest}: "
                              + _describe(diffs[closest]))
    raise CheckpointError(f"the backbone keys fit {' and '.join(matches)} (same shapes, different strides); pass --arch")


def _describe(diff: tuple[list, list, list]) -> str:
    return "; ".join(f"{name} {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                     for name, keys in zip(("missing", "unexpected", "mis-shaped"), diff) if keys)


def import_reference(cfg: ImportConfig) -> Any:
    """Convert a reference checkpoint into our format and save it atomically at ``cfg.out``.

    Returns:
        The saved :class:`~us3l.core.checkpoint.Checkpoint`.

    Raises:
        CheckpointError: unreadable file, unmappable / missing / mis-shaped keys (listed).
        ConfigError: unsupported ``arch``; WidthError: ``calibrated_width`` outside the range.

    Examples:
        >>> ckpt = import_reference(ImportConfig("checkpoint_width_0.5.pth.tar", "r18.pt",
        ...                                      arch="us_resnet18_cifar", calibrated_width=0.5))  # doctest: +SKIP
    """
    from us3l.core.bn import bn_stats
    from us3l.core.checkpoint import Checkpoint, save_checkpoint
    from us3l.core.models import get_model
    from us3l.core.width import validate_width

    from us3l.core.files import check_writable_dir

    out = Path(cfg.out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; valid: the checkpoint file to write, e.g. {out / 'r18.pt'}")
    check_writable_dir(out.parent, "--out folder")
    if cfg.calibrated_width is not None:
        validate_width(cfg.calibrated_width)
    state, info = read_reference(cfg.source)
    if cfg.arch is not None and cfg.arch not in SUPPORTED:
        raise ConfigError(f"architecture {cfg.arch!r} cannot be imported from reference checkpoints; valid: {', '.join(SUPPORTED)}")
    arch = cfg.arch or detect_arch(state, info["arch"])
    missing, unexpected, bad = mismatches(state, expected_shapes(arch))
    if missing or unexpected or bad:
        raise CheckpointError(f"{cfg.source} does not fit {arch}: " + _describe((missing, unexpected, bad)))
    model = get_model(arch).eval()
    own = model.state_dict()
    has_stats = all(k in state for k in own if k.endswith((".running_mean", ".running_var")))
    own.update({k: v.to(own[k].dtype) for k, v in state.items()})
    model.load_state_dict(own, strict=True)
    extra = {"reference": {"source": str(Path(cfg.source).resolve()), "arch": info["arch"], "dropped": info["dropped"],
                           "calibrated_width": cfg.calibrated_width, "has_bn_statistics": has_stats}}
    ckpt = Checkpoint.from_model(model, method="reference", epoch=info["epoch"], extra=extra)
    if cfg.calibrated_width is not None:
        w = validate_width(cfg.calibrated_width, *model.width_range)
        if not has_stats:
            raise CheckpointError(f"{cfg.source} has no BN running statistics; --calibrated-width needs a file written "
                                  f"by the reference BN-calibration step (checkpoint_width_{{w}}.pth.tar)")
        ckpt.add_bn_stats(w, bn_stats(model, w))
    save_checkpoint(ckpt, cfg.out)
    log.info("Imported %s as %s (%d tensors) -> %s", cfg.source, arch, len(state), cfg.out)
    return ckpt
