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

A **task checkpoint** (a classifier: ``us3l finetune``, or eval's own ``linear-classifier.pt``) is
measured by its classifier's **top-1** by default (:func:`evaluate_classifier`: the backbone with
the BN statistics it ships with, from its bank, and its head); ``--method knn|linear|both`` still
measures its backbone's features.

Results are rows ``{"width", "precision", "feature_dim", "outputs", "sha256", "knn"?, "linear"?,
"top1"?}`` with accuracies in [0, 1]. :func:`run_eval` merges them into ``accuracy.json`` beside the
checkpoint, one row per protocol (:mod:`us3l.core.accuracy`: each row records what it measured,
the sha256 of the file or checkpoint state, the outputs kind, protocol and precision; tables only
grow), for ``bench``, which joins rows by the exact file it timed.

An exported ONNX artifact (FP32, FP16 or INT8; features, logits or probs) is measured by
:func:`evaluate_artifact` in ONNX Runtime: its BN statistics are baked into the file (no
recalibration); a classifier file reports the top-1 of its own outputs, a features file goes
through the same kNN / linear probe. Its row carries the file's own sha256, precision and outputs,
so an INT8 accuracy is measured on that INT8 file, never borrowed.
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

from us3l.core.accuracy import ACCURACY_FILE, read_accuracy, read_accuracy_file, table_rows, \
    update_accuracy, write_accuracy  # noqa: F401
from us3l.core.bn import bn_stats, calibrate_bn
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.models.base import SlimmableNet
from us3l.core.errors import BackendUnavailableError, CheckpointError, ConfigError, DataError, unknown_name
from us3l.core.heartbeat import stage
from us3l.core.threads import AutoThreads
from us3l.core.width import DEFAULT_DIVISOR, default_widths, format_width, parse_widths, round_width

from .probes import (KNN_TEMPERATURE, LINEAR_PRESETS, LinearProbeConfig, RowBlock, _batches, _linear_cfg,  # noqa: F401
                     extract_features, extract_stream, knn_accuracy, linear_probe_accuracy, train_linear_probe)
from .pipeline import EvalStream, stream_num_classes

log = logging.getLogger(__name__)
METHODS = ("knn", "linear", "both", "top1")
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
    if method not in METHODS or method == "top1":
        raise unknown_name("feature evaluation method", method, ("knn", "linear", "both"))
    if store_bn and divisor != DEFAULT_DIVISOR:
        raise ConfigError(f"--store-bn needs the default channel divisor {DEFAULT_DIVISOR}, got {divisor}")
    probe = _linear_cfg(linear)
    widths = parse_widths(list(widths), *ckpt.width_range)
    spec = dataset if dataset is not None else _checkpoint_dataset(ckpt)
    # Batch by batch: image files are decoded by loader processes, in-memory sets (CIFAR at 32 px) are
    # sliced and resized per batch; nothing holds a whole split of images at the evaluation size.
    with stage("loading data"):  # image folders are listed here, in-memory sets loaded
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
    with stage("widths", total=len(widths)) as count:
        for i, w in enumerate(widths):
            rows.append(_evaluate_width(model, ckpt, w, i, count, has_bn, calib, calib_stream, calib_batches, store_bn,
                                        train_s, test_s, method, bank_only, k, n_classes, probe, heads_out, progress,
                                        device, divisor))
    if store_bn and save_to is not None:
        save_checkpoint(ckpt, save_to)
    return rows


def _evaluate_width(model: SlimmableNet, ckpt: Checkpoint, w: float, i: int, count: Any, has_bn: bool, calib: Any,
                    calib_stream: EvalStream, calib_batches: int, store_bn: bool, train_s: EvalStream,
                    test_s: EvalStream, method: str, bank_only: bool, k: int, n_classes: int,
                    probe: LinearProbeConfig, heads_out: dict[str, Any] | None, progress: Progress | None,
                    device: str | torch.device, divisor: int) -> dict[str, Any]:
    """One row of :func:`evaluate_checkpoint` (``count``: the widths stage, advanced when done)."""
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
                           "source": "pytorch", "outputs": "features", "sha256": ckpt.content_hash,
                           "bn": "recalibrated" if has_bn else None}
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
    count.update(i + 1)
    if progress:
        progress(w, "done")
    return row


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
                       fixed_batch: int | None, bank: bool = False,
                       width_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of an ONNX artifact on a split (ONNX Runtime CPU), resized per batch to ``size``; and
    the labels. ``bank``: keep L2-normalised float16 rows (a kNN bank), so memory stays small.
    ``width_index``: the index fed to a switchable file (``us3l export --switchable``)."""
    import numpy as np
    import torch.nn.functional as F

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
    rows = RowBlock(len(stream))  # one preallocated block: memory does not grow with the split
    for images, y in stream:
        outs = []
        for b in _batches(images, step, size):
            x = b.float().numpy()
            n = len(x)
            if fixed_batch and n < fixed_batch:
                x = np.concatenate([x, np.repeat(x[-1:], fixed_batch - n, axis=0)])
            f = torch.from_numpy(np.asarray(sess.run(None, {name: np.ascontiguousarray(x), **extra})[0], dtype=np.float32)[:n])
            outs.append(F.normalize(f, dim=1).half() if bank else f)
        if outs:
            rows.add(torch.cat(outs), y)
    try:
        return rows.result()
    except DataError:
        raise DataError(f"no readable images to run {path.name} on") from None


CLASSIFIER_OUTPUTS = ("logits", "probs")


def evaluate_artifact(ckpt: Checkpoint, artifact: str | os.PathLike, method: str = "knn",
                      dataset: DatasetSpec | None = None, knn_k: int | None = None,
                      linear: LinearProbeConfig | str = "fast", batch_size: int = 256,
                      divisor: int = DEFAULT_DIVISOR, workers: int | None = None,
                      progress: Progress | None = None, width: float | None = None) -> dict[str, Any]:
    """Accuracy of one exported ONNX artifact of ``ckpt``, measured on that file in ONNX Runtime; of
    a switchable file (``us3l export --switchable``) at ``width``, one of those it holds (its row
    records ``width_index`` beside the file's sha256).

    A classifier file (``logits``/``probs``) gives the top-1 of its own outputs on the test split
    (``method`` does not apply); a features file goes through kNN / the linear probe as
    :func:`evaluate_checkpoint` (``method`` ``top1`` is refused for it).

    Returns:
        ``{"width", "precision", "feature_dim", "outputs", "knn"?, "linear"?, "top1"?,
        "source": "artifact", "artifact", "sha256"}``; ``sha256`` is computed from the file itself.

    Raises:
        ConfigError: no sidecar, another checkpoint's artifact, another divisor, not ONNX, or
            ``top1`` asked of a features file. BackendUnavailableError: onnxruntime missing.
    """
    from us3l.core.data import dataset_stats
    from us3l.core.files import sha256_file

    from us3l.core.checks import check_onnx_file

    path = Path(artifact)
    if not path.is_file():
        raise ConfigError(f"artifact {path} does not exist")
    check_onnx_file(path)  # the file itself first: a truncated or foreign file is named as such
    side = _artifact_sidecar(path)
    if side.get("format") != "onnx":
        raise ConfigError(f"artifact {path.name} is {side.get('format')}; eval runs ONNX artifacts (ONNX Runtime) here; "
                          "valid: an .onnx file written by 'us3l export'")
    recorded = (side.get("checkpoint") or {}).get("sha256")
    if recorded != ckpt.content_hash:
        raise CheckpointError(f"artifact {path.name} was exported from another checkpoint (hash {str(recorded)[:12]}, "
                              f"this one {ckpt.content_hash[:12]}); evaluate it with its own checkpoint")
    file_divisor = int(side.get("divisor", DEFAULT_DIVISOR))  # the file is measured as it is (snapped or not)
    outputs = (side.get("output") or {}).get("kind") or ("logits" if side.get("head") else "features")
    if outputs not in ("features", *CLASSIFIER_OUTPUTS):
        raise ConfigError(f"artifact {path.name} outputs {outputs}; accuracy is measured on features, logits or probs")
    if outputs == "features" and method == "top1":
        raise ConfigError(f"artifact {path.name} outputs features, which have no top-1; use --method knn|linear|both, "
                          "or export the classifier with --outputs logits")
    spec = dataset if dataset is not None else _checkpoint_dataset(ckpt)
    norm = (side.get("input") or {}).get("normalization")
    if norm:
        mean, std = dataset_stats(spec)
        if [round(v, 4) for v in norm["mean"]] != [round(v, 4) for v in mean] or \
                [round(v, 4) for v in norm["std"]] != [round(v, 4) for v in std]:
            raise ConfigError(f"artifact {path.name} expects images normalised with {norm}; {spec.name} is normalised "
                              f"differently")
    if progress:  # checked: the work starts
        progress(0.0 if width is None else float(width), f"evaluate {path.name}")
    digest = sha256_file(path)
    if side.get("sha256") and side["sha256"] != digest:
        log.warning("%s differs from what its sidecar records (sha256 %s, sidecar %s); measuring the file as it is",
                    path.name, digest[:12], str(side["sha256"])[:12])
    shape = side["input"]["shape"]
    size = int(shape[-1])
    fixed = shape[0] if isinstance(shape[0], int) else None
    index, table = None, (side.get("switchable") or {}).get("index")
    if table:
        from us3l.core.width import index_for

        if width is None:
            raise ConfigError(f"{path.name} is a switchable file; give the widths to evaluate (--widths)")
        index = index_for(table, width, path.name)
        side = {**side, "width": width, "feature_dim": table[index]["feature_dim"]}
    train_s = EvalStream(spec, "train", batch_size, workers)
    test_s = EvalStream(spec, "test", batch_size, workers)
    n_classes = stream_num_classes(spec)
    row: dict[str, Any] = {"width": round_width(float(side["width"])), "precision": side.get("precision", "fp32"),
                           "feature_dim": int(side["feature_dim"]), "source": "artifact", "artifact": path.name,
                           "sha256": digest, "outputs": outputs, "bn": "baked", "divisor": file_divisor,
                           **({"width_index": index} if index is not None else {})}
    if outputs in CLASSIFIER_OUTPUTS:  # the sidecar's feature_dim is its output size (classes): report the backbone's
        net: Any = ckpt.build_model()
        row["feature_dim"] = int(net.feature_dim(row["width"], file_divisor))
        f_test, test_y = _artifact_features(path, test_s, batch_size, size, fixed, width_index=index)
        row["top1"] = float((f_test.argmax(1) == test_y).float().mean())
        log.info("artifact %s: %s", path.name, row)
        return row
    bank = method == "knn"
    f_test, test_y = _artifact_features(path, test_s, batch_size, size, fixed, bank=bank, width_index=index)
    f_train, train_y = _artifact_features(path, train_s, batch_size, size, fixed, bank=bank, width_index=index)
    k = knn_k if knn_k is not None else (200 if len(train_s) >= 10_000 else 20)
    if method in ("knn", "both"):
        row["knn"] = knn_accuracy(f_train, train_y, f_test, test_y, k, KNN_TEMPERATURE, n_classes)
        row["knn_k"] = int(min(k, len(train_y)))
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
    from us3l.core.width import held_widths

    return held_widths(table)


def evaluate_classifier(ckpt: Checkpoint, widths: list[float], dataset: DatasetSpec | None = None,
                        calib_batches: int = 50, batch_size: int = 256, device: str | torch.device = "cpu",
                        progress: Progress | None = None, workers: int | None = None) -> list[dict[str, Any]]:
    """Top-1 of a task checkpoint's classifier at each width, as it ships: the backbone with the BN
    statistics of its bank (recalibrated on training images only for a width the bank lacks) and
    its head (shared and input-slimmed, or the probe of that width).

    Returns:
        One row per width: ``{"width", "precision": "fp32", "feature_dim", "outputs": "logits",
        "top1", "source": "pytorch", "sha256"`` (:func:`~us3l.core.taskmodel.classifier_state_hash`)
        ``, "bn": "bank" | "recalibrated"}``.

    Raises:
        CheckpointError: no head (or no head for a width). DataError / WidthError: as for
            :func:`evaluate_checkpoint`.
    """
    from us3l.core.bn import load_bn_stats
    from us3l.core.context import use_width
    from us3l.core.taskmodel import classifier_state_hash, has_head, static_head

    if not has_head(ckpt):
        raise CheckpointError("the checkpoint has no classifier to measure top-1 on; use --method knn|linear|both "
                              "(its features), or fine-tune it first ('us3l finetune')")
    widths = parse_widths(list(widths), *ckpt.width_range)
    spec = dataset if dataset is not None else _checkpoint_dataset(ckpt)
    digest = classifier_state_hash(ckpt)
    test_s = EvalStream(spec, "test", batch_size, workers)
    model: Any = ckpt.build_model().to(device)  # a SlimmableNet (feature_dim)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    calib = None
    rows = []
    for w in widths:
        if progress:
            progress(w, "calibrate")
        stats = ckpt.bn_stats_for(w) if has_bn else None
        if stats:
            load_bn_stats(model, stats, w)
            bn = "bank"
        elif has_bn:
            if calib is None:
                train_s = EvalStream(spec, "train", batch_size, workers)
                order = torch.randperm(len(train_s), generator=torch.Generator().manual_seed(0))
                calib = train_s.subset(order[: calib_batches * batch_size]).images()
            calibrate_bn(model, calib, w, num_batches=calib_batches, device=device)
            bn = "recalibrated"
        else:
            bn = None
        if progress:
            progress(w, "evaluate")
        dim = int(model.feature_dim(w))
        head = static_head(ckpt, w, dim).to(device)
        model.eval()
        correct = seen = 0
        with torch.no_grad(), use_width(model, w):
            for x, y in test_s:
                logits = head(model(x.to(device)))
                correct += int((logits.argmax(1).cpu() == y).sum())
                seen += len(y)
        if seen == 0:
            raise DataError(f"no readable test image in {spec.name} to measure top-1 on")
        rows.append({"width": round_width(w), "precision": "fp32", "feature_dim": dim, "outputs": "logits",
                     "top1": correct / seen, "source": "pytorch", "sha256": digest, "bn": bn})
        log.info("width %s: top-1 %.4f (%s BN)", format_width(w), rows[-1]["top1"], bn)
        if progress:
            progress(w, "done")
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
    if method == "top1":
        proto["bn_calibration"] = "bank (cumulative recalibration for widths the bank lacks)"
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
    method: str | None = None  # None: top1 for a task checkpoint (its classifier), else knn
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
    threads: int = 0  # CPU threads (0: auto, one per CPU other processes leave idle; us3l.core.threads)
    out: str | None = None  # the accuracy table (None: accuracy.json beside the checkpoint, where bench looks)

    def __post_init__(self) -> None:
        from us3l.core.checks import check_number
        from us3l.core.threads import check_threads

        check_threads(self.threads)
        check_number("--calib-batches", self.calib_batches, minimum=1, integer=True)
        check_number("--batch-size", self.batch_size, minimum=1, integer=True)
        check_number("--knn-k", self.knn_k, minimum=1, integer=True)
        check_number("--image-size", self.image_size, minimum=4, integer=True)
        if self.method is not None and self.method not in METHODS:
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
    """Load, evaluate, merge the rows into ``accuracy.json`` (and the BN bank with ``store_bn``).

    The table only grows (:func:`us3l.core.accuracy.update_accuracy`): rows of other protocols,
    precisions, outputs or files are kept, and a row is replaced only by a newer measurement of the
    same thing (same sha256, width, precision, outputs, protocol and dataset). A table of another
    checkpoint is replaced, with a log line.
    """
    from us3l.core.taskmodel import has_head, state_hashes

    ckpt_path = Path(cfg.checkpoint)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"--device {cfg.device}: CUDA is not available on this machine; valid here: cpu")
    ckpt = load_checkpoint(ckpt_path)
    if not cfg.device.startswith("cuda"):
        AutoThreads(cfg.threads)  # sets torch's threads for this evaluation
    if cfg.store_bn and ckpt_path.is_dir():
        raise ConfigError(f"--store-bn rewrites a checkpoint file; {ckpt_path} is a packed model directory "
                          "(store the statistics in the checkpoint, then 'us3l pack' it again)")
    spec = _resolve_dataset(ckpt, cfg)
    lo, hi = ckpt.width_range
    widths = parse_widths(cfg.widths, lo, hi) if cfg.widths is not None else default_widths(lo, hi)
    method = cfg.method or ("top1" if has_head(ckpt) else "knn")
    if method not in METHODS:
        raise unknown_name("evaluation method", method, METHODS)
    heads: dict[str, Any] = {}
    if cfg.artifacts:
        switchable = {a: _switchable_widths(Path(a)) for a in cfg.artifacts}
        if cfg.store_bn or (cfg.widths is not None and not all(switchable.values())):
            raise ConfigError("--artifact measures exported files (their width is fixed, their BN baked in); "
                              "drop --widths / --store-bn (--widths chooses widths of a switchable file only)")
        rows = []
        for a in cfg.artifacts:
            held = switchable[a]
            for w in (widths if cfg.widths is not None else held) if held else [None]:
                rows.append(evaluate_artifact(ckpt, a, method if cfg.method else "knn", spec, cfg.knn_k,
                                              cfg.linear_preset, cfg.batch_size, cfg.divisor, cfg.workers, progress,
                                              width=w))
    elif method == "top1":
        if cfg.store_bn:
            raise ConfigError("--store-bn recalibrates the backbone for kNN/linear; top-1 measures the classifier with "
                              "the BN statistics it ships with (drop --store-bn, or use --method knn|linear|both)")
        if cfg.divisor != DEFAULT_DIVISOR:
            raise ConfigError(f"top-1 measures the classifier as exported, with divisor {DEFAULT_DIVISOR}")
        rows = evaluate_classifier(ckpt, widths, spec, cfg.calib_batches, cfg.batch_size, cfg.device, progress,
                                   cfg.workers)
    else:
        rows = evaluate_checkpoint(ckpt, widths, method, spec,
                                   cfg.calib_batches, cfg.knn_k, cfg.linear_preset, cfg.store_bn, progress,
                                   cfg.batch_size, cfg.device, cfg.divisor, save_to=ckpt_path, heads_out=heads,
                                   workers=cfg.workers)
    measured = (cfg.method or "knn") if cfg.artifacts else method  # artifacts: classifier files give top-1 anyway
    protocol = eval_protocol(measured, spec, cfg.calib_batches, cfg.knn_k, cfg.linear_preset, cfg.divisor)
    details = {k: v for k, v in protocol.items() if k != "method"}
    if cfg.artifacts:  # BN recalibration settings do not apply to artifacts (their BN is baked in)
        details = {k: v for k, v in details.items() if k not in ("calib_batches", "bn_calibration")}
    out = Path(cfg.out) if cfg.out else (ckpt_path if ckpt_path.is_dir() else ckpt_path.parent) / ACCURACY_FILE
    _, _, note = update_accuracy(out, ckpt.content_hash, table_rows(rows, details), state_hashes(ckpt))
    if note:
        log.warning("%s", note)
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
