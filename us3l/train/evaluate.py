"""Per-width evaluation of a universally slimmable checkpoint: BN recalibration, kNN, linear probe.

For every width (docs/method.md §10, §11): rebuild the backbone from the checkpoint, recalibrate the BN
running statistics at that width on un-augmented training images (cumulative average over
``calib_batches`` shuffled batches, reset first; the reference instead runs 3 EMA passes with the
probe's train augmentation, docs/method.md §15.6), then measure, on eval-mode features of the frozen
backbone,

- ``knn``: weighted k-nearest-neighbour top-1 (cosine similarity, weights ``exp(sim / 0.07)``, the
  usual SSL kNN monitor; the reference has none), train split -> test split;
- ``linear``: a linear probe trained with SGD on precomputed features. The ``"cifar"`` preset keeps
  docs/method.md §11's optimiser recipe (lr 30, momentum 0.9, wd 0, 100 epochs, lr x0.1 at 60/80,
  batch 512) but, unlike the reference, trains on features of un-augmented images; ``"fast"`` is
  the default for small sets (standardised features, 60 epochs).

Results are rows ``{"width", "feature_dim", "knn"?, "linear"?}`` with accuracies in [0, 1], written
next to the checkpoint as ``accuracy.json`` (``{"checkpoint", "protocol", "results"}``) for ``bench``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from us3l.core.accuracy import ACCURACY_FILE, read_accuracy, read_accuracy_file, write_accuracy  # noqa: F401
from us3l.core.bn import bn_stats, calibrate_bn
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec, default_image_size, load_split, num_classes
from us3l.core.errors import ConfigError, DataError, unknown_name
from us3l.core.width import DEFAULT_DIVISOR, default_widths, parse_widths, round_width

from .probes import (KNN_TEMPERATURE, LINEAR_PRESETS, LinearProbeConfig, _batches, _linear_cfg,  # noqa: F401
                     extract_features, knn_accuracy, linear_probe_accuracy)

log = logging.getLogger(__name__)
METHODS = ("knn", "linear", "both")
Progress = Callable[[float, str], None]


def evaluate_checkpoint(ckpt: Checkpoint, widths: list[float], method: str = "knn", dataset: DatasetSpec | None = None,
                        calib_batches: int = 50, knn_k: int | None = None,
                        linear: LinearProbeConfig | str = "fast", store_bn: bool = False, progress: Progress | None = None,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        divisor: int = DEFAULT_DIVISOR, save_to: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Accuracy of each width of ``ckpt`` after BN recalibration at that width.

    Args:
        ckpt: the checkpoint (its ``dataset`` is the default data).
        widths: widths to evaluate (validated against the checkpoint's range).
        method: "knn", "linear" or "both".
        dataset: data to calibrate and evaluate on (default: the checkpoint's training data).
        calib_batches: training batches (of ``batch_size``, shuffled with a fixed seed) for BN calibration.
        knn_k: neighbours; None = 20, or 200 for training sets of 10 000 images or more.
        linear: a :class:`LinearProbeConfig` or a preset name ("fast", "cifar").
        store_bn: add the calibrated statistics to ``ckpt.bn_bank`` (and re-save to ``save_to``).
        progress: called as ``progress(width, stage)`` with stage "calibrate", "evaluate", "done".
        batch_size / device / divisor: inference batch, device and channel divisor.
        save_to: with ``store_bn``, write the updated checkpoint here atomically (None: do not save).

    Returns:
        One row per width: ``{"width", "feature_dim", "knn"?, "linear"?}``, accuracies in [0, 1].

    Raises:
        ConfigError / UnknownNameError: bad method, preset or store_bn with a non-default divisor.
        DataError: no dataset known or the data is missing. WidthError: a width outside the range.
    """
    if method not in METHODS:
        raise unknown_name("evaluation method", method, METHODS)
    if store_bn and divisor != DEFAULT_DIVISOR:
        raise ConfigError(f"--store-bn needs the default channel divisor {DEFAULT_DIVISOR}, got {divisor}")
    probe = _linear_cfg(linear)
    widths = parse_widths(list(widths), *ckpt.width_range)
    spec = dataset if dataset is not None else _checkpoint_dataset(ckpt)
    size = default_image_size(spec)  # CIFAR stays 32 px in memory; batches are resized on the fly
    train_x, train_y = load_split(spec, "train", resize=False)
    test_x, test_y = load_split(spec, "test", resize=False)
    n_classes = num_classes(spec)
    k = knn_k if knn_k is not None else (200 if len(train_x) >= 10_000 else 20)
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    # only the images calibration reads are gathered (the same batches as permuting the whole split)
    calib = _batches(train_x[order[: calib_batches * batch_size]], batch_size, size)
    model = ckpt.build_model().to(device)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    rows = []
    for w in widths:
        if progress:
            progress(w, "calibrate")
        if has_bn:
            calibrate_bn(model, calib, w, num_batches=calib_batches, device=device, divisor=divisor)
            if store_bn:
                ckpt.add_bn_stats(w, bn_stats(model, w, divisor))
        if progress:
            progress(w, "evaluate")
        f_train = extract_features(model, train_x, w, batch_size, device, divisor, size)
        f_test = extract_features(model, test_x, w, batch_size, device, divisor, size)
        row: dict[str, Any] = {"width": round_width(w), "feature_dim": int(model.feature_dim(w, divisor))}
        if method in ("knn", "both"):
            row["knn"] = knn_accuracy(f_train, train_y, f_test, test_y, k, KNN_TEMPERATURE, n_classes)
        if method in ("linear", "both"):
            row["linear"] = linear_probe_accuracy(f_train, train_y, f_test, test_y, n_classes, probe)
        log.info("width %s: %s", w, {key: v for key, v in row.items() if key != "width"})
        rows.append(row)
        if progress:
            progress(w, "done")
    if store_bn and save_to is not None:
        save_checkpoint(ckpt, save_to)
    return rows


def _checkpoint_dataset(ckpt: Checkpoint) -> DatasetSpec:
    if not ckpt.dataset:
        raise DataError("the checkpoint records no training dataset; pass one with --data NAME [--data-root PATH]")
    return DatasetSpec.from_dict(ckpt.dataset)


def eval_protocol(method: str, spec: DatasetSpec, calib_batches: int, knn_k: int | None,
                  linear: LinearProbeConfig | str, divisor: int = DEFAULT_DIVISOR) -> dict[str, Any]:
    """The JSON description of an evaluation protocol (stored in ``accuracy.json``)."""
    proto: dict[str, Any] = {"method": method, "dataset": spec.to_dict(), "bn_calibration": "cumulative",
                             "calib_batches": calib_batches, "divisor": divisor}
    if method in ("knn", "both"):
        proto["knn"] = {"k": knn_k if knn_k is not None else "auto", "temperature": KNN_TEMPERATURE, "metric": "cosine"}
    if method in ("linear", "both"):
        proto["linear"] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(_linear_cfg(linear)).items()}
    return proto


@dataclass(frozen=True)
class EvalConfig:
    """Everything ``us3l eval`` needs (one frozen config per command)."""

    checkpoint: str
    widths: str | None = None  # None: 0.25/0.5/0.75/1.0 within the checkpoint's range, plus its ends
    method: str = "knn"
    dataset: str | None = None
    data_root: str | None = None
    image_size: int | None = None
    calib_batches: int = 50
    batch_size: int = 256
    knn_k: int | None = None
    linear_preset: str = "fast"
    store_bn: bool = False
    device: str = "cpu"
    divisor: int = DEFAULT_DIVISOR


@dataclass
class EvalResult:
    """What ``run_eval`` did: rows, the accuracy file and the checkpoint's identity."""

    rows: list[dict[str, Any]]
    accuracy_path: Path
    checkpoint_hash: str
    protocol: dict[str, Any] = field(default_factory=dict)


def run_eval(cfg: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Load, evaluate, write ``accuracy.json`` next to the checkpoint (and the BN bank with ``store_bn``).

    Rows for other widths already in ``accuracy.json`` are kept when the checkpoint hash and the
    protocol are unchanged; otherwise the file is replaced.
    """
    ckpt_path = Path(cfg.checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    spec = _resolve_dataset(ckpt, cfg)
    lo, hi = ckpt.width_range
    widths = parse_widths(cfg.widths, lo, hi) if cfg.widths is not None else default_widths(lo, hi)
    rows = evaluate_checkpoint(ckpt, widths, cfg.method, spec,
                               cfg.calib_batches, cfg.knn_k, cfg.linear_preset, cfg.store_bn, progress,
                               cfg.batch_size, cfg.device, cfg.divisor, save_to=ckpt_path)
    protocol = eval_protocol(cfg.method, spec, cfg.calib_batches, cfg.knn_k, cfg.linear_preset, cfg.divisor)
    out = ckpt_path.parent / ACCURACY_FILE
    merged = {r["width"]: r for r in _previous_rows(out, ckpt.content_hash, protocol)}
    merged.update({r["width"]: r for r in rows})
    write_accuracy(out, [merged[w] for w in sorted(merged)], protocol, ckpt.content_hash)
    return EvalResult(rows=rows, accuracy_path=out, checkpoint_hash=ckpt.content_hash, protocol=protocol)


def _resolve_dataset(ckpt: Checkpoint, cfg: EvalConfig) -> DatasetSpec:
    if cfg.dataset is not None:
        return DatasetSpec(cfg.dataset, cfg.data_root, cfg.image_size)
    spec = _checkpoint_dataset(ckpt)
    if cfg.data_root is not None:
        spec = replace(spec, root=cfg.data_root)
    if cfg.image_size is not None:
        spec = replace(spec, image_size=cfg.image_size)
    return spec


def _previous_rows(path: Path, checkpoint_hash: str, protocol: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        data = read_accuracy_file(path)
    except DataError:
        return []
    if data.get("checkpoint") != checkpoint_hash or data.get("protocol") != protocol:
        return []
    return data["results"]
