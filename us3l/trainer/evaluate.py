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

Results are rows ``{"width", "precision", "feature_dim", "knn"?, "linear"?}`` with accuracies in
[0, 1], written next to the checkpoint as ``accuracy.json`` (``{"checkpoint", "protocol", "results"}``)
for ``bench``, keyed by (width, precision).

An exported ONNX artifact (FP32, FP16 or INT8) is measured by :func:`evaluate_artifact` with the
same protocol, run in ONNX Runtime: its BN statistics are baked into the file (no recalibration),
features of the same train/test splits go through the same kNN / linear probe; an artifact with a
classifier head (``--include-head``) reports top-1 of its own logits. Its row carries the
artifact's precision, so INT8 accuracy is measured, never borrowed from FP32.
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

from us3l.core.accuracy import ACCURACY_FILE, read_accuracy, read_accuracy_file, row_key, write_accuracy  # noqa: F401
from us3l.core.bn import bn_stats, calibrate_bn
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.errors import BackendUnavailableError, CheckpointError, ConfigError, DataError, unknown_name
from us3l.core.precision import precision_rank
from us3l.core.width import DEFAULT_DIVISOR, default_widths, format_width, parse_widths, round_width

from .probes import (KNN_TEMPERATURE, LINEAR_PRESETS, LinearProbeConfig, _batches, _linear_cfg,  # noqa: F401
                     extract_features, extract_stream, knn_accuracy, linear_probe_accuracy, train_linear_probe)
from .pipeline import EvalStream, stream_num_classes

log = logging.getLogger(__name__)
METHODS = ("knn", "linear", "both")
PROBE_CLASSIFIER_FILE = "linear-classifier.pt"  # beside the checkpoint: the probes as a task checkpoint
Progress = Callable[[float, str], None]


def evaluate_checkpoint(ckpt: Checkpoint, widths: list[float], method: str = "knn", dataset: DatasetSpec | None = None,
                        calib_batches: int = 50, knn_k: int | None = None,
                        linear: LinearProbeConfig | str = "fast", store_bn: bool = False, progress: Progress | None = None,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        divisor: int = DEFAULT_DIVISOR, save_to: str | os.PathLike | None = None,
                        heads_out: dict[str, Any] | None = None, workers: int | None = None) -> list[dict[str, Any]]:
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
        heads_out: a dict that receives, per width (``format_width``), the linear probe as
            ``{"weight", "bias"}`` (standardisation folded in) and the width's BN statistics under
            ``"bn"`` (the classifier ``run_eval`` writes).
        workers: loader processes decoding image files (None: from the CPU count; unused for in-memory sets).

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
    # Batch by batch: image files are decoded by loader processes, in-memory sets (CIFAR at 32 px) are
    # sliced and resized per batch; nothing holds a whole split of images at the evaluation size.
    train_s = EvalStream(spec, "train", batch_size, workers)
    test_s = EvalStream(spec, "test", batch_size, workers)
    n_classes = stream_num_classes(spec)
    k = knn_k if knn_k is not None else (200 if len(train_s) >= 10_000 else 20)
    order = torch.randperm(len(train_s), generator=torch.Generator().manual_seed(0))
    # only the images calibration reads (the same batches as permuting the whole split)
    calib_stream = train_s.subset(order[: calib_batches * batch_size])
    calib = calib_stream.images()
    bank_only = method == "knn"  # a float16 bank of normalised features is all kNN needs
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
        f_train, train_y = extract_stream(model, train_s, w, device, divisor, bank=bank_only)
        f_test, test_y = extract_stream(model, test_s, w, device, divisor, bank=bank_only)
        row: dict[str, Any] = {"width": round_width(w), "precision": "fp32", "feature_dim": int(model.feature_dim(w, divisor)),
                               "source": "pytorch"}
        if has_bn:  # what was used, not what was asked (a small set gives fewer batches)
            row["calib_images"] = int(len(calib_stream))
        if method in ("knn", "both"):
            row["knn"] = knn_accuracy(f_train, train_y, f_test, test_y, k, KNN_TEMPERATURE, n_classes)
            row["knn_k"] = int(min(k, len(train_y)))
        if method in ("linear", "both"):
            row["linear"], weight, bias = train_linear_probe(f_train, train_y, f_test, test_y, n_classes, probe)
            if heads_out is not None:
                heads_out[format_width(w)] = {"weight": weight, "bias": bias, "bn": bn_stats(model, w, divisor)}
        log.info("width %s: %s", w, {key: v for key, v in row.items() if key != "width"})
        rows.append(row)
        if progress:
            progress(w, "done")
    if store_bn and save_to is not None:
        save_checkpoint(ckpt, save_to)
    return rows


def _artifact_sidecar(path: Path) -> dict[str, Any]:
    import json

    sidecar = path.with_name(path.name[: -len(path.suffix)] + ".json") if path.suffix else path.with_suffix(".json")
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"artifact {path} has no readable sidecar {sidecar.name} (written by 'us3l export')") from None
    if not isinstance(data, dict) or data.get("artifact") != path.name:
        raise ConfigError(f"sidecar {sidecar} does not describe {path.name}")
    return data


def _artifact_features(path: Path, stream: EvalStream, batch_size: int, size: int,
                       fixed_batch: int | None, width_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of an ONNX artifact on a split (ONNX Runtime CPU), resized per batch to ``size``; and the labels."""
    import numpy as np

    try:
        import onnxruntime as ort
    except ImportError:
        raise BackendUnavailableError("evaluating an artifact needs onnxruntime; pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = next(i.name for i in sess.get_inputs() if i.name != "width_index")
    extra = {} if width_index is None else {"width_index": np.asarray(width_index, dtype=np.int64)}
    step = fixed_batch or batch_size
    out, labels = [], []
    for images, y in stream:
        labels.append(y)
        for b in _batches(images, step, size):
            x = b.float().numpy()
            n = len(x)
            if fixed_batch and n < fixed_batch:
                x = np.concatenate([x, np.repeat(x[-1:], fixed_batch - n, axis=0)])
            out.append(torch.from_numpy(np.asarray(sess.run(None, {name: np.ascontiguousarray(x), **extra})[0],
                                                   dtype=np.float32)[:n]))
    return torch.cat(out), torch.cat(labels)


def evaluate_artifact(ckpt: Checkpoint, artifact: str | os.PathLike, method: str = "knn",
                      dataset: DatasetSpec | None = None, knn_k: int | None = None,
                      linear: LinearProbeConfig | str = "fast", batch_size: int = 256,
                      divisor: int = DEFAULT_DIVISOR, workers: int | None = None,
                      width: float | None = None) -> dict[str, Any]:
    """Accuracy of one exported ONNX artifact of ``ckpt`` (same protocol as :func:`evaluate_checkpoint`);
    of a switchable file (``us3l export --switchable``) at ``width``, one of those it holds.

    Returns:
        ``{"width", "precision", "feature_dim", "knn"?, "linear"?, "top1"?, "source": "artifact",
        "artifact", "sha256"}``.

    Raises:
        ConfigError: no sidecar, another checkpoint's artifact, another divisor, or not ONNX.
        BackendUnavailableError: onnxruntime missing.
    """
    from us3l.core.data import dataset_stats

    path = Path(artifact)
    if not path.is_file():
        raise ConfigError(f"artifact {path} does not exist")
    side = _artifact_sidecar(path)
    if side.get("format") != "onnx":
        raise ConfigError(f"artifact {path.name} is {side.get('format')}; eval runs ONNX artifacts (ONNX Runtime) here; "
                          "valid: an .onnx file written by 'us3l export'")
    recorded = (side.get("checkpoint") or {}).get("sha256")
    if recorded != ckpt.content_hash:
        raise CheckpointError(f"artifact {path.name} was exported from another checkpoint (hash {str(recorded)[:12]}, "
                              f"this one {ckpt.content_hash[:12]}); evaluate it with its own checkpoint")
    if int(side.get("divisor", DEFAULT_DIVISOR)) != divisor:
        raise ConfigError(f"artifact {path.name} has divisor {side.get('divisor')}, the evaluation uses {divisor}")
    spec = dataset if dataset is not None else _checkpoint_dataset(ckpt)
    norm = (side.get("input") or {}).get("normalization")
    if norm:
        mean, std = dataset_stats(spec)
        if [round(v, 4) for v in norm["mean"]] != [round(v, 4) for v in mean] or \
                [round(v, 4) for v in norm["std"]] != [round(v, 4) for v in std]:
            raise ConfigError(f"artifact {path.name} expects images normalised with {norm}; {spec.name} is normalised "
                              f"differently")
    shape = side["input"]["shape"]
    size = int(shape[-1])
    fixed = shape[0] if isinstance(shape[0], int) else None
    index, table = None, (side.get("switchable") or {}).get("index")
    if table:
        from us3l.exporters.switchable import index_for

        if width is None:
            raise ConfigError(f"{path.name} is a switchable file; give the widths to evaluate (--widths)")
        index = index_for(table, width, path.name)
        row_info = table[index]
        side = {**side, "width": width, "feature_dim": row_info["feature_dim"]}
    train_s = EvalStream(spec, "train", batch_size, workers)
    test_s = EvalStream(spec, "test", batch_size, workers)
    n_classes = stream_num_classes(spec)
    f_test, test_y = _artifact_features(path, test_s, batch_size, size, fixed, index)
    row: dict[str, Any] = {"width": round_width(float(side["width"])), "precision": side.get("precision", "fp32"),
                           "feature_dim": int(side["feature_dim"]), "source": "artifact", "artifact": path.name,
                           "sha256": side.get("sha256"), **({"width_index": index} if index is not None else {})}
    if side.get("head"):
        row["top1"] = float((f_test.argmax(1) == test_y).float().mean())
        return row
    f_train, train_y = _artifact_features(path, train_s, batch_size, size, fixed, index)
    k = knn_k if knn_k is not None else (200 if len(train_s) >= 10_000 else 20)
    if method in ("knn", "both"):
        row["knn"] = knn_accuracy(f_train, train_y, f_test, test_y, k, KNN_TEMPERATURE, n_classes)
    if method in ("linear", "both"):
        row["linear"] = linear_probe_accuracy(f_train, train_y, f_test, test_y, n_classes, _linear_cfg(linear))
    log.info("artifact %s: %s", path.name, row)
    return row


def _switchable_widths(path: Path) -> list[float]:
    """The widths a switchable artifact holds (empty for a one-width file or an unreadable sidecar)."""
    try:
        side = _artifact_sidecar(path) if path.is_file() else {}
    except ConfigError:
        return []
    table = (side.get("switchable") or {}).get("index")
    if not table:
        return []
    from us3l.exporters.switchable import held_widths

    return held_widths(table)


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
    artifacts: tuple[str, ...] = ()  # exported ONNX files to measure instead of the PyTorch widths
    workers: int | None = None  # loader processes for image files (None: from the CPU count)
    out: str | None = None  # the accuracy table (None: accuracy.json beside the checkpoint, where bench looks)

    def __post_init__(self) -> None:
        from us3l.core.checks import check_number

        check_number("--calib-batches", self.calib_batches, minimum=1, integer=True)
        check_number("--batch-size", self.batch_size, minimum=1, integer=True)
        check_number("--knn-k", self.knn_k, minimum=1, integer=True)
        check_number("--image-size", self.image_size, minimum=4, integer=True)
        if self.method not in METHODS:
            raise unknown_name("evaluation method", self.method, METHODS)
        if not (self.device in ("cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"--device {self.device!r} is invalid; valid: cpu, cuda, cuda:N")


@dataclass
class EvalResult:
    """What ``run_eval`` did: rows, the accuracy file and the checkpoint's identity."""

    rows: list[dict[str, Any]]
    accuracy_path: Path
    checkpoint_hash: str
    protocol: dict[str, Any] = field(default_factory=dict)
    classifier: Path | None = None  # the linear probes as a task checkpoint (method linear/both)


def run_eval(cfg: EvalConfig, progress: Progress | None = None) -> EvalResult:
    """Load, evaluate, write ``accuracy.json`` next to the checkpoint (and the BN bank with ``store_bn``).

    Rows for other widths already in ``accuracy.json`` are kept when the checkpoint hash and the
    protocol are unchanged; otherwise the file is replaced.
    """
    ckpt_path = Path(cfg.checkpoint)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device {cfg.device}: CUDA is not available on this machine; valid here: cpu")
    ckpt = load_checkpoint(ckpt_path)
    if cfg.store_bn and ckpt_path.is_dir():
        raise ConfigError(f"--store-bn rewrites a checkpoint file; {ckpt_path} is a packed model directory "
                          "(store the statistics in the checkpoint, then 'us3l pack' it again)")
    spec = _resolve_dataset(ckpt, cfg)
    lo, hi = ckpt.width_range
    widths = parse_widths(cfg.widths, lo, hi) if cfg.widths is not None else default_widths(lo, hi)
    if cfg.method not in METHODS:
        raise unknown_name("evaluation method", cfg.method, METHODS)
    if cfg.artifacts:
        switchable = {a: _switchable_widths(Path(a)) for a in cfg.artifacts}
        if cfg.store_bn or (cfg.widths is not None and not all(switchable.values())):
            raise ConfigError("--artifact measures exported files (their width is fixed, their BN baked in); "
                              "drop --widths / --store-bn (--widths chooses widths of a switchable file only)")
        rows = []
        for a in cfg.artifacts:
            held = switchable[a]
            for w in (widths if cfg.widths is not None else held) if held else [None]:
                if progress:
                    progress(0.0 if w is None else w, f"evaluate {Path(a).name}")
                rows.append(evaluate_artifact(ckpt, a, cfg.method, spec, cfg.knn_k, cfg.linear_preset, cfg.batch_size,
                                              cfg.divisor, cfg.workers, width=w))
    heads: dict[str, Any] = {}
    if not cfg.artifacts:
        rows = evaluate_checkpoint(ckpt, widths, cfg.method, spec,
                                   cfg.calib_batches, cfg.knn_k, cfg.linear_preset, cfg.store_bn, progress,
                                   cfg.batch_size, cfg.device, cfg.divisor, save_to=ckpt_path, heads_out=heads,
                                   workers=cfg.workers)
    protocol = eval_protocol(cfg.method, spec, cfg.calib_batches, cfg.knn_k, cfg.linear_preset, cfg.divisor)
    out = Path(cfg.out) if cfg.out else (ckpt_path if ckpt_path.is_dir() else ckpt_path.parent) / ACCURACY_FILE
    if cfg.artifacts:  # BN recalibration settings do not apply to artifacts (their BN is baked in):
        protocol = _artifact_protocol(out, ckpt.content_hash, protocol)  # keep the table's protocol
    merged = {row_key(r): r for r in _previous_rows(out, ckpt.content_hash, protocol)}
    merged.update({row_key(r): r for r in rows})
    write_accuracy(out, [merged[k] for k in sorted(merged, key=lambda k: (k[0], precision_rank(k[1])))], protocol,
                   ckpt.content_hash)
    if ckpt_path.is_dir() and out.parent == ckpt_path:  # a packed model directory: its card shows the new table
        from us3l.core.modelfile import refresh_card

        refresh_card(ckpt_path)
    classifier = None
    if heads and cfg.divisor == DEFAULT_DIVISOR:
        from .finetune import write_probe_classifier

        classifier = write_probe_classifier(ckpt, heads, spec, out.parent / PROBE_CLASSIFIER_FILE)
    return EvalResult(rows=rows, accuracy_path=out, checkpoint_hash=ckpt.content_hash, protocol=protocol,
                      classifier=classifier)


def _resolve_dataset(ckpt: Checkpoint, cfg: EvalConfig) -> DatasetSpec:
    if cfg.dataset is not None:
        return DatasetSpec(cfg.dataset, cfg.data_root, cfg.image_size)
    spec = _checkpoint_dataset(ckpt)
    if cfg.data_root is not None:
        spec = replace(spec, root=cfg.data_root)
    if cfg.image_size is not None:
        spec = replace(spec, image_size=cfg.image_size)
    return spec


def _artifact_protocol(path: Path, checkpoint_hash: str, protocol: dict[str, Any]) -> dict[str, Any]:
    """The existing table's protocol when it differs from ``protocol`` only in BN recalibration."""
    try:
        data = read_accuracy_file(path)
    except DataError:
        return protocol
    old = data.get("protocol") or {}
    ignore = ("calib_batches", "bn_calibration")
    same = {k: v for k, v in old.items() if k not in ignore} == {k: v for k, v in protocol.items() if k not in ignore}
    return old if data.get("checkpoint") == checkpoint_hash and same else protocol


def _previous_rows(path: Path, checkpoint_hash: str, protocol: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        data = read_accuracy_file(path)
    except DataError:
        return []
    if data.get("checkpoint") != checkpoint_hash or data.get("protocol") != protocol:
        return []
    return data["results"]
