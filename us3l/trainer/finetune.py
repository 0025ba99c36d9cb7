"""Universally slimmable supervised fine-tuning: one task checkpoint that classifies at every width.

``run_finetune(FinetuneConfig(...))`` is the one entry point behind ``us3l finetune``.

- **Model.** The SSL checkpoint's backbone plus a classifier. ``head="per-width"`` (the default):
  one linear layer per width of the evaluation ladder (``widths``, default 0.25/0.5/0.75/1.0), as
  SlimCLR's switchable head (arXiv 2209.15525); a width between two heads uses the nearer one
  (a tie goes to the narrower) on the first ``min(D_w, D_head)`` features, in training as at
  inference (:func:`us3l.core.taskmodel.choose_head`). ``head="shared"``: one shared,
  input-slimmed linear head (the architecture's ``fc``: at width ``w`` it reads the first
  ``feature_dim(w)`` features).
- **Sandwich rule with in-place distillation** (US-Nets; docs/method.md §8 for the width draws):
  each step runs the max width, the min width and ``num_widths - 2`` uniform widths, gradients
  accumulated, one optimiser step. The max width learns from the labels (cross-entropy with
  optional label smoothing); every other width learns from the max width's soft predictions of the
  same images (detached), ``-sum softmax(z_max) * log_softmax(z_w)``. With ``distill=False`` every
  width learns from the labels.
- **--freeze-backbone** trains only the classifier. Per-width heads are one linear probe per ladder
  width, each trained on the labels at its own width every step, on eval-mode features (the BN
  statistics of that width calibrated first, as at inference), standardised as ``us3l eval``'s
  linear probe: each feature's mean and standard deviation at that width, measured on the
  un-augmented calibration images (``calib_batches`` batches of the training split). After
  training the standardisation is folded into each width's linear layer (``W / std``,
  ``b - (W / std) @ mean``), so the saved heads read raw features and exports and ``predict``
  are unchanged. By default they also train as the probe on un-augmented images with plain
  cross-entropy (``augment`` and ``label_smoothing`` below). A shared head is trained with the sandwich rule on train-mode (raw) features.
- **BN.** Training uses batch statistics; afterwards the running statistics are recalibrated at each
  evaluation width on un-augmented training images (cumulative average, as ``us3l eval``) and stored
  in the checkpoint's BN bank, so export needs no data.
- **Output.** ``OUT/checkpoint.pt`` (a task checkpoint, :mod:`us3l.core.taskmodel`: backbone, head,
  class names, normalisation and preprocessing, BN bank; no optimiser state) and
  ``OUT/accuracy.json`` (top-1 per width, the table ``us3l bench`` joins).

Data come through :class:`TaskData` only, batch by batch, so nothing holds a whole split of images:

- **image files** (``--data imagefolder``) stream through the training pipeline
  (:mod:`us3l.trainer.pipeline`): ``workers`` loader processes decode each file and cut a
  RandomResizedCrop of the *full* image (area fraction in ``(crop_scale_min, 1)``, aspect in
  ``(3/4, 4/3)``) plus a horizontal flip, drawn from ``(seed, epoch, index)``; memory is bounded by
  batch x workers x prefetch, not by the number of files (``perf/task_pipeline.py`` measures it).
  BN calibration and the test split read the evaluation view (shorter side to the size, centre
  crop) the same way. Bad files are skipped with a warning or stop the run (``on_bad_image``);
- **in-memory sets** (digits, Fashion-MNIST, CIFAR) are held at their native resolution and resized
  per batch (CIFAR at 224 px is never materialised).

Augmentation (``augment``): ``auto`` (``crop`` for image files, ``shift`` for in-memory sets;
``none`` for frozen-backbone per-width heads, which train on the evaluation view as ``us3l eval``'s
linear probe: on digits shifted views cost them 1.4 to 2.2 points against the probe at widths
0.25 to 0.75, README "Task models on digits");
``crop`` (the random resized crop and flip above; in-memory sets get the same crop per image,
sampled bilinearly); ``shift`` (a random translation of up to ``shift`` of the image side,
replicate padding, on the evaluation view); ``none``.

Recipes (:data:`FINETUNE_RECIPES`): ``digits``, ``fashion_mnist`` and ``cifar`` are sized for a CPU
(SGD 0.9 with Nesterov, cosine, wd 5e-4, label smoothing 0.1, none for frozen-backbone per-width
heads). ``paper`` mirrors the reference's
per-width fine-tuning (``configs/cifar/resnet18_finetune_cifar.yaml``): one width at a time
(``train_width`` is required), 50 epochs, batch 64, SGD lr 0.01 momentum 0.9 wd 1e-4, lr x0.1 at
epochs 30 and 40, RandomResizedCrop (0.08, 1) and flip, plain cross-entropy
(docs/paper-recipes.md maps every fine-tuning configuration of the reference).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from us3l.core.accuracy import ACCURACY_FILE, update_accuracy
from us3l.core.bn import bn_stats, calibrate_bn, load_bn_stats
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint, strip_prefixes
from us3l.core.context import use_width
from us3l.core.data import DatasetSpec, dataset_stats, default_image_size, resize_images
from us3l.core.errors import ConfigError, DataError, unknown_name
from us3l.core.heartbeat import stage
from us3l.core.models.base import SlimmableNet
from us3l.core.images import BAD_IMAGE_POLICIES
from us3l.core.precision import Precision
from us3l.core.taskmodel import nearest_head_width, sliced_logits, task_info
from us3l.core.threads import AutoThreads
from us3l.core.width import DEFAULT_DIVISOR, default_widths, format_width, parse_widths, round_width

from . import pipeline
from .probes import feature_scaler, fold_standardization
from .sampling import sample_widths

log = logging.getLogger(__name__)
Progress = Callable[[int, "int | None", str], None]
AUGMENTS = ("auto", "crop", "shift", "none")
HEADS = ("per-width", "shared")
SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything ``us3l finetune`` needs (one frozen config per command).

    Attributes:
        checkpoint: the SSL checkpoint (or packed model directory) whose backbone is fine-tuned.
        out_dir: where ``checkpoint.pt`` and ``accuracy.json`` go (default: ``finetune`` beside
            the checkpoint, ``linear`` with ``freeze_backbone``).
        dataset / data_root / image_size: labelled data (default: the checkpoint's training set).
        epochs / batch_size / lr / momentum / weight_decay / nesterov: SGD.
        schedule / milestones: ``cosine`` (per step), or ``step``: lr x0.1 at each epoch in ``milestones``.
        one_width: refuse to run without ``train_width`` (the ``paper`` preset: one width at a time).
        label_smoothing: for the max width's cross-entropy; None: 0.1, or 0 for frozen-backbone
            per-width heads (plain cross-entropy, as the linear probe: on Fashion-MNIST smoothing cost
            them 1.9 points at width 0.25).
        num_widths: widths per step (sandwich: max, min and ``num_widths - 2`` random ones).
        distill: in-place distillation of the sub-widths from the max width.
        head: ``per-width`` (one linear layer per ladder width, the nearer one in between) or
            ``shared`` (one input-slimmed layer for every width).
        freeze_backbone: train only the classifier.
        init: ``checkpoint`` (the SSL weights) or ``scratch`` (random weights of the same
            architecture: the supervised baseline).
        train_width: train only this one width (the separately trained baselines), else the range.
        widths: evaluation (and BN bank) widths; default 0.25/0.5/0.75/1.0 within the range.
        augment / shift / crop_scale_min: ``auto`` (``crop`` for image files, ``shift`` for in-memory
            sets), ``crop`` (random resized crop of the full image, area fraction in
            ``(crop_scale_min, 1)``, and a flip), ``shift`` (random translation up to ``shift`` x
            side) or ``none``.
        calib_batches / eval_batch_size: BN recalibration batches of ``eval_batch_size`` images.
        workers / prefetch: loader processes decoding image files (None: from the CPU count; 0:
            in this process) and batches each one prepares ahead.
        on_bad_image: ``skip`` (warn and go on) or ``fail`` (one error line) for unreadable files.
        max_steps_per_epoch: cap (tests and smoke runs); None = the whole split.
        seed / device: reproducibility and placement.
    """

    checkpoint: str
    out_dir: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    image_size: int | None = None
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float | None = None
    num_widths: int = 4
    distill: bool = True
    head: str = "per-width"
    freeze_backbone: bool = False
    init: str = "checkpoint"
    train_width: float | None = None
    widths: str | None = None
    augment: str = "auto"
    shift: float = 0.125
    crop_scale_min: float = 0.25
    calib_batches: int = 20
    eval_batch_size: int = 256
    max_steps_per_epoch: int | None = None
    seed: int = 0
    device: str = "cpu"
    nesterov: bool = True
    schedule: str = "cosine"
    milestones: tuple[int, ...] = ()
    one_width: bool = False
    threads: int = 0  # CPU threads (0: auto, one per CPU other processes leave idle; us3l.core.threads)
    workers: int | None = None
    prefetch: int = 2
    on_bad_image: str = "skip"

    def replace(self, **changes: Any) -> FinetuneConfig:
        """A copy with ``changes`` applied (``None`` values are ignored)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self) -> None:
        """Raise :class:`ConfigError` (one line) for values no run could use."""
        for name in ("epochs", "batch_size", "calib_batches", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name.replace('_', '-')} {getattr(self, name)} is invalid; valid: a positive integer")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ConfigError(f"max-steps-per-epoch {self.max_steps_per_epoch} is invalid; valid: a positive integer")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr {self.lr} is invalid; valid: a positive number")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError("weight-decay must be >= 0 and momentum in [0, 1)")
        if self.label_smoothing is not None and not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label-smoothing {self.label_smoothing} is invalid; valid: [0, 1)")
        if self.num_widths < 1:
            raise ConfigError(f"num-widths {self.num_widths} is invalid; valid: 1 (max only), 2 (max, min) or more")
        if self.augment not in AUGMENTS:
            raise unknown_name("augmentation", self.augment, AUGMENTS)
        if self.head not in HEADS:
            raise unknown_name("head", self.head, HEADS)
        if self.schedule not in SCHEDULES:
            raise unknown_name("lr schedule", self.schedule, SCHEDULES)
        if any(int(m) < 1 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"milestones {list(self.milestones)} are invalid; valid: increasing epochs >= 1")
        if self.one_width and self.train_width is None:
            raise ConfigError("this preset fine-tunes one width at a time, as the reference does; pass --train-width W "
                              "(one run per width)")
        if not 0 <= self.shift < 0.5:
            raise ConfigError(f"shift {self.shift} is invalid; valid: a fraction of the image side in [0, 0.5)")
        if not 0 < self.crop_scale_min <= 1:
            raise ConfigError(f"crop-scale-min {self.crop_scale_min} is invalid; valid: an area fraction in (0, 1]")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers {self.workers} is invalid; valid: 0 (decode in this process) or more")
        if self.prefetch < 1:
            raise ConfigError(f"prefetch {self.prefetch} is invalid; valid: a positive integer")
        if self.on_bad_image not in BAD_IMAGE_POLICIES:
            raise unknown_name("bad-image policy", self.on_bad_image, BAD_IMAGE_POLICIES)
        if self.init not in ("checkpoint", "scratch"):
            raise unknown_name("initialisation", self.init, ("checkpoint", "scratch"))
        if self.freeze_backbone and self.init == "scratch":
            raise ConfigError("--freeze-backbone with init=scratch would train a head on random features; drop one")
        from us3l.core.threads import check_threads

        check_threads(self.threads)


#: CPU-sized presets (see the module docstring).
FINETUNE_RECIPES: dict[str, dict[str, Any]] = {
    "digits": {"epochs": 30, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4},
    # 20 epochs: at 10 slimmable fine-tuning underfits (README, "Accuracy on Fashion-MNIST": 83.3 % at width
    # 1.0 after 10 epochs, 88.5 % after 20, the max width's training loss 0.91 -> 0.78)
    "fashion_mnist": {"epochs": 20, "batch_size": 128, "lr": 0.05, "weight_decay": 5e-4, "shift": 0.1},
    "cifar": {"epochs": 100, "batch_size": 128, "lr": 0.05, "weight_decay": 5e-4, "shift": 0.125},
    # configs/cifar/resnet18_finetune_cifar.yaml: NUM_SAMPLE_TRAINING 1 (one width), EPOCHS 50, BATCH_SIZE 64,
    # SGD momentum 0.9, WEIGHT_DECAY 1e-4, BASE_LR 0.01, multiStep x0.1 at [30, 40], RandomResizedCrop
    # scale (0.08, 1) + flip, CrossEntropy (no label smoothing); plain SGD momentum
    "paper": {"epochs": 50, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
              "label_smoothing": 0.0, "nesterov": False, "schedule": "step", "milestones": (30, 40),
              "augment": "crop", "crop_scale_min": 0.08, "one_width": True},
}
#: learning rate of the head alone (--freeze-backbone): a linear head on frozen features tolerates more
FROZEN_LR_SCALE = 4.0


def get_finetune_recipe(name: str) -> dict[str, Any]:
    """The overrides of recipe ``name``.

    Raises:
        UnknownNameError: unknown recipe (lists the valid ones).
    """
    if name not in FINETUNE_RECIPES:
        raise unknown_name("fine-tuning recipe", name, sorted(FINETUNE_RECIPES))
    return dict(FINETUNE_RECIPES[name])


def resolve_augment(augment: str, spec: DatasetSpec, probes: bool = False) -> str:
    """``augment`` with ``auto`` resolved: ``none`` for ``probes`` (frozen-backbone per-width heads, trained
    on the evaluation view as the linear probe), else ``crop`` for image files, ``shift`` for in-memory sets."""
    if augment == "auto":
        if probes:
            return "none"
        return "crop" if pipeline.is_streamed(spec) else "shift"
    return augment


class TaskData:
    """The labelled data of one fine-tuning run, batch by batch (see the module docstring).

    Attributes:
        spec / size / augment: the dataset, the input side and the resolved augmentation.
        n_train / steps_per_epoch: training images (files listed, bad ones included) and steps.
        calib: a re-iterable of normalised training images (evaluation view) for BN recalibration:
            ``calib_batches`` batches of ``eval_batch_size`` images in a fixed seeded order.
        test: the test split as ``(images, labels)`` batches (:class:`~us3l.trainer.pipeline.EvalStream`).
    """

    def __init__(self, spec: DatasetSpec, cfg: FinetuneConfig, pin: bool = False) -> None:
        self.spec, self.cfg = spec, cfg
        self.size = default_image_size(spec)
        self.augment = resolve_augment(cfg.augment, spec, cfg.freeze_backbone and cfg.head == "per-width")
        mean, std = dataset_stats(spec)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        train = pipeline.EvalStream(spec, "train", cfg.eval_batch_size, cfg.workers, on_bad_image=cfg.on_bad_image)
        self.test = pipeline.EvalStream(spec, "test", cfg.eval_batch_size, cfg.workers, on_bad_image=cfg.on_bad_image)
        self.n_train = len(train)
        if self.n_train == 0 or len(self.test) == 0:
            raise DataError(f"dataset {spec.name} has an empty split")
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(0))
        self.calib = train.subset(order[: cfg.calib_batches * cfg.eval_batch_size]).images()
        self.steps_per_epoch = math.ceil(self.n_train / cfg.batch_size)
        if cfg.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.max_steps_per_epoch)
        self.stream: pipeline.TrainStream | None = None
        self.x, self.y = train.x, train.y  # in-memory sets: normalised, native resolution (shared with calib)
        if train.files is not None:
            files = train.files
            if not files.labelled:
                raise DataError(f"{files.source} is unlabelled; fine-tuning needs train/<class>/ folders "
                                "(or a file list with labels)")
            self.labels = torch.from_numpy(files.labels)
            self.workers = pipeline.resolve_workers(cfg.workers)
            items = pipeline.TaskFiles(files.paths, self.size, (cfg.crop_scale_min, 1.0), cfg.seed,
                                       "crop" if self.augment == "crop" else "center")
            self.stream = pipeline.TrainStream(files, self.size, (cfg.crop_scale_min, 1.0), cfg.seed, 0, 1,
                                               cfg.batch_size, self.steps_per_epoch, False, self.workers,
                                               cfg.prefetch, pin, dataset=items)
            self.bad = pipeline.BadImages(cfg.on_bad_image, files.source)
            log.info("streaming %d training images from %s with %d loader process(es)", self.n_train, files.source,
                     self.workers)

    @property
    def bad_count(self) -> int:
        """Distinct unreadable training files met so far (0 for in-memory sets)."""
        return self.bad.count if self.stream is not None else 0

    def epoch(self, epoch: int, gen: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """Augmented, normalised training batches ``(x (B, 3, S, S), y)`` of ``epoch``, on the CPU.

        ``gen`` draws the in-memory order and every batched augmentation (shift, in-memory crop).
        """
        cfg = self.cfg
        if self.stream is None:
            assert self.x is not None and self.y is not None
            order = torch.randperm(self.n_train, generator=gen)
            for i in range(self.steps_per_epoch):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                x, y = self.x[idx], self.y[idx]
                if self.augment == "crop":
                    x = _crop(x, self.size, (cfg.crop_scale_min, 1.0), gen)
                else:
                    x = resize_images(x, self.size)
                    if self.augment == "shift":
                        x = _shift(x, cfg.shift, gen)
                yield x, y
            return
        for batch in self.stream.epoch(epoch):
            self.bad.record(batch["bad"], describe=self.stream.describe)
            if len(batch["images"]) == 0:
                continue
            x = (batch["images"].permute(0, 3, 1, 2).float().div_(255.0) - self.mean) / self.std
            if self.augment == "shift":
                x = _shift(x, cfg.shift, gen)
            yield x, self.labels[batch["ids"]]


def _crop(x: Tensor, size: int, scale: tuple[float, float], gen: torch.Generator) -> Tensor:
    """A random resized crop (area fraction in ``scale``, aspect in ``(3/4, 4/3)``) and a random
    horizontal flip of each image of an in-memory batch, sampled bilinearly to ``size``: the boxes
    of :func:`us3l.trainer.pipeline.crop_box`, drawn from ``gen``."""
    import numpy as np

    n, _, h, w = x.shape
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    theta = torch.zeros(n, 2, 3)
    for i in range(n):
        left, top, cw, ch = pipeline.crop_box(w, h, scale, rng)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        theta[i, 0, 0], theta[i, 0, 2] = flip * cw / w, (2 * left + cw) / w - 1
        theta[i, 1, 1], theta[i, 1, 2] = ch / h, (2 * top + ch) / h - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def _shift(x: Tensor, frac: float, gen: torch.Generator) -> Tensor:
    """Random translation of each image by up to ``frac`` of its side (replicate padding)."""
    n, _, h, w = x.shape
    p = int(round(frac * h))
    if p < 1:
        return x
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    c, wp = x.shape[1], padded.shape[3]
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, c, h, wp)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def soft_cross_entropy(student: Tensor, teacher: Tensor) -> Tensor:
    """``-sum softmax(teacher) * log_softmax(student)``, averaged over the batch (teacher detached)."""
    return -(F.softmax(teacher.detach(), dim=1) * F.log_softmax(student, dim=1)).sum(1).mean()


@dataclass
class FinetuneOutcome:
    """What :func:`run_finetune` wrote and measured."""

    checkpoint: Path
    accuracy_path: Path
    rows: list[dict[str, Any]]
    checkpoint_hash: str
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def _describe(spec: DatasetSpec) -> str:
    where = f" ({Path(spec.root).name})" if spec.root and spec.name == "imagefolder" else ""
    return f"{spec.name}{where} at {default_image_size(spec)} px"


def dataset_notice(spec: DatasetSpec, ckpt: Checkpoint) -> str | None:
    """One line when fine-tuning data differ from the SSL checkpoint's training data (a notice: the
    backbone's features were learned on other images, which is allowed and often intended)."""
    if not ckpt.dataset:
        return None
    parent = DatasetSpec.from_dict(ckpt.dataset)
    same_root = (parent.root or "") == (spec.root or "") or (
        parent.root is not None and spec.root is not None and Path(parent.root).resolve() == Path(spec.root).resolve())
    if parent.name == spec.name and same_root:
        return None
    return (f"fine-tuning on {_describe(spec)}, while the SSL checkpoint was trained on {_describe(parent)}: its "
            f"features were learned on other images")


def undertrained_notices(rows: list[dict[str, Any]], ckpt_path: str | Path, ckpt: Checkpoint,
                         spec: DatasetSpec) -> list[str]:
    """One line per fine-tuned width whose top-1 is below the SSL checkpoint's own kNN accuracy at
    that width on the same data (from the ``accuracy.json`` beside it): a sign of an under-trained
    classifier (more epochs, another learning rate)."""
    from us3l.core.accuracy import normalize_rows, read_accuracy_file

    src = Path(ckpt_path)
    table = (src if src.is_dir() else src.parent) / ACCURACY_FILE
    try:
        data = read_accuracy_file(table)
    except DataError:
        return []
    if data.get("checkpoint") not in (None, ckpt.content_hash):
        return []
    legacy = (data.get("protocol") or {}).get("dataset")
    knn: dict[float, float] = {}
    for r in normalize_rows(data["results"]):
        measured_on = ((r.get("details") or {}).get("dataset") or legacy or {}).get("name")
        if r["protocol"] == "knn" and r.get("source", "pytorch") == "pytorch" \
                and Precision.parse(r["precision"]) is Precision.FP32 and measured_on == spec.name:
            knn[round_width(r["width"])] = max(knn.get(round_width(r["width"]), 0.0), float(r["knn"]))
    out = []
    for r in rows:
        ref = knn.get(round_width(r["width"]))
        if ref is not None and r["top1"] < ref:
            out.append(f"width {format_width(r['width'])}: fine-tuned top-1 {100 * r['top1']:.1f} % is below the SSL "
                       f"checkpoint's kNN {100 * ref:.1f} % at that width (under-trained? try more --epochs)")
    return out


def _resolve(cfg: FinetuneConfig, ckpt: Checkpoint) -> DatasetSpec:
    if cfg.dataset is not None:
        return DatasetSpec(cfg.dataset, cfg.data_root, cfg.image_size)
    if not ckpt.dataset:
        raise DataError("the checkpoint records no training dataset; pass one with --data NAME [--data-root PATH]")
    spec = DatasetSpec.from_dict(ckpt.dataset)
    if cfg.data_root is not None:
        spec = replace(spec, root=cfg.data_root)
    if cfg.image_size is not None:
        spec = replace(spec, image_size=cfg.image_size)
    return spec


def _build(cfg: FinetuneConfig, ckpt: Checkpoint, k: int, size: int) -> SlimmableNet:
    from us3l.core.models import get_model

    kwargs = dict(ckpt.arch_kwargs)
    if "input_size" in kwargs:
        kwargs["input_size"] = size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.init == "scratch":
            kwargs["num_classes"] = k
            model = get_model(ckpt.arch, **kwargs)
        else:
            model = ckpt.build_model(num_classes=k)
            if "input_size" in kwargs and kwargs["input_size"] != model.input_size:
                model.input_size = int(size)
    return model


class PerWidthHeads(nn.Module):
    """One linear layer per ladder width; :meth:`forward` uses the nearer head of a width
    (:func:`us3l.core.taskmodel.nearest_head_width`) on the first ``min(D_w, D_head)`` features.

    Args:
        widths: the ladder (one head each).
        dims: the feature dimension at each of ``widths``.
        num_classes: outputs of every head.
    """

    def __init__(self, widths: list[float], dims: list[int], num_classes: int) -> None:
        super().__init__()
        self.widths = [round_width(w) for w in widths]
        self.heads = nn.ModuleDict({_mkey(w): nn.Linear(int(d), int(num_classes)) for w, d in zip(self.widths, dims)})

    def key_for(self, width: float) -> str:
        """The ``format_width`` key of the head serving ``width``."""
        return format_width(nearest_head_width(width, self.widths))

    def head(self, width: float) -> nn.Linear:
        """The linear layer of ladder width ``width`` (exactly; :meth:`forward` picks the nearer one)."""
        layer = self.heads[_mkey(width)]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, features: Tensor, width: float) -> Tensor:
        head = self.head(nearest_head_width(width, self.widths))
        return sliced_logits(features, head.weight, head.bias)

    @torch.no_grad()
    def fold(self, scalers: dict[str, tuple[Tensor, Tensor]]) -> None:
        """Fold each width's input standardisation into its head (:func:`~us3l.trainer.probes.fold_standardization`):
        a head trained on ``(f - mean) / std`` then reads the raw features ``f``, so the checkpoint,
        its exports and ``predict`` need nothing more.

        Args:
            scalers: ``{format_width(w): (mean, std)}`` for every ladder width ``w``.
        """
        for w in self.widths:
            head = self.head(w)
            weight, bias = fold_standardization(head.weight, head.bias, *scalers[format_width(w)])
            head.weight.copy_(weight)
            head.bias.copy_(bias)

    def state(self) -> dict[str, dict[str, Tensor]]:
        """``{format_width(w): {"weight", "bias"}}`` (a task checkpoint's ``extra["heads"]``)."""
        return {format_width(w): {"weight": self.head(w).weight.detach().cpu().clone(),
                                  "bias": self.head(w).bias.detach().cpu().clone()} for w in self.widths}


@torch.no_grad()
def calib_features(model: SlimmableNet, calib: Iterable[Tensor], width: float, num_batches: int,
                   device: torch.device | str = "cpu") -> Tensor:
    """Eval-mode features at ``width`` of the first ``num_batches`` batches of ``calib`` (un-augmented
    training images), float32 on the CPU: the sample whose statistics standardise a frozen head's input."""
    model.eval()
    out = []
    with use_width(model, width):
        for i, x in enumerate(calib):
            if i >= num_batches:
                break
            out.append(model(x.to(device)).float().cpu())
    if not out:
        raise DataError("no training image to measure the features' statistics on")
    return torch.cat(out)


def _mkey(width: float) -> str:
    return format_width(width).replace(".", "_")  # ModuleDict keys cannot hold dots


def _lr_factor(cfg: FinetuneConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning-rate multiplier at optimizer step ``step``: cosine per step, or x0.1 per passed milestone."""
    if cfg.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return 0.1 ** sum(epoch >= m for m in cfg.milestones)
    return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def run_finetune(cfg: FinetuneConfig, progress: Progress | None = None) -> FinetuneOutcome:
    """Fine-tune, recalibrate BN per width, measure top-1 per width, write the task checkpoint.

    Raises:
        ConfigError, UnknownNameError, CheckpointError, DataError, WidthError: one-line user errors.
    """
    cfg.validate()
    t0 = time.perf_counter()
    ckpt = load_checkpoint(cfg.checkpoint)
    threads = AutoThreads(cfg.threads, apply=not cfg.device.startswith("cuda"))
    spec = _resolve(cfg, ckpt)
    notices = [n for n in (dataset_notice(spec, ckpt),) if n]
    for n in notices:
        log.info("notice: %s", n)
    lo, hi = ckpt.width_range
    eval_widths = parse_widths(cfg.widths, lo, hi) if cfg.widths is not None else default_widths(lo, hi)
    if cfg.train_width is not None:
        lo = hi = parse_widths([cfg.train_width], lo, hi)[0]
        eval_widths = [lo]
    device = torch.device(cfg.device)
    with stage("loading data"):
        data = TaskData(spec, cfg, pin=device.type == "cuda")
    size, k = data.size, pipeline.stream_num_classes(spec)
    per_width = cfg.head == "per-width"
    probes = cfg.freeze_backbone and per_width  # trained as us3l eval's linear probes (module docstring)
    smoothing = cfg.label_smoothing if cfg.label_smoothing is not None else (0.0 if probes else 0.1)
    model = _build(cfg, ckpt, 0 if per_width else k, size).to(device)
    heads: PerWidthHeads | None = None
    if per_width:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            dims = [int(getattr(model, "feature_dim")(w)) for w in eval_widths]
            heads = PerWidthHeads(eval_widths, dims, k).to(device)
    lr = cfg.lr * (FROZEN_LR_SCALE if cfg.freeze_backbone else 1.0)
    if cfg.freeze_backbone:
        for name, p in model.named_parameters():
            p.requires_grad_(not per_width and name.startswith("fc."))
    params = [p for p in model.parameters() if p.requires_grad] + (list(heads.parameters()) if heads else [])
    opt = torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    steps_per_epoch = data.steps_per_epoch
    total = steps_per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(cfg, s, total, steps_per_epoch))
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    frozen_bank: dict[str, dict[str, dict[str, Tensor]]] = {}
    scalers: dict[str, tuple[Tensor, Tensor]] = {}  # per width: the features' (mean, std), as the linear probe
    if cfg.freeze_backbone and per_width:  # the heads see the features inference gives: eval-mode BN per width
        for w in eval_widths:
            calibrate_bn(model, data.calib, w, num_batches=cfg.calib_batches, device=device)
            frozen_bank[format_width(w)] = bn_stats(model, w)
            mean, std = feature_scaler(calib_features(model, data.calib, w, cfg.calib_batches, device))
            scalers[format_width(w)] = (mean.to(device), std.to(device))
    ladder = sorted(eval_widths, reverse=True)
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(cfg.epochs):
        model.train()
        sums = {"loss_max": 0.0, "loss_sub": 0.0}
        done = 0
        for i, (x, y) in enumerate(data.epoch(epoch, gen)):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if frozen_bank:
                widths = ladder  # one probe per width, every step
            else:
                widths = [hi] if lo == hi else sample_widths(rng, cfg.num_widths, lo, hi, sandwich=True)
            opt.zero_grad(set_to_none=True)
            teacher = None
            for j, w in enumerate(widths):
                if frozen_bank:
                    load_bn_stats(model, frozen_bank[format_width(w)], w)
                    model.eval()
                    with torch.no_grad(), use_width(model, w):
                        mean, std = scalers[format_width(w)]
                        feats = (model(x) - mean) / std  # standardised, as us3l eval's linear probe
                    assert heads is not None
                    logits = heads(feats, w)
                else:
                    with use_width(model, w):
                        if cfg.freeze_backbone:
                            with torch.no_grad():
                                feats = model.forward_features(x)
                            logits = model.fc(feats)
                        else:
                            logits = model(x) if heads is None else heads(model(x), w)
                if j == 0 or not cfg.distill or frozen_bank:
                    loss = F.cross_entropy(logits, y, label_smoothing=smoothing)
                    teacher = logits.detach() if j == 0 else teacher
                    sums["loss_max" if j == 0 else "loss_sub"] += float(loss.detach()) / (1 if j == 0 else len(widths) - 1)
                else:
                    assert teacher is not None  # set by the widest width, which runs first
                    loss = soft_cross_entropy(logits, teacher)
                    sums["loss_sub"] += float(loss.detach()) / (len(widths) - 1)
                if not torch.isfinite(loss):
                    from .step import TrainingDivergedError

                    raise TrainingDivergedError(f"non-finite fine-tuning loss at epoch {epoch} step {i} (width {format_width(w)}); "
                                        f"lower --lr (now {cfg.lr:g})")
                loss.backward()
            opt.step()
            sched.step()
            step += 1
            done += 1
            if progress:
                progress(step, total, f"epoch {epoch + 1}/{cfg.epochs}")
            threads.tick()
        if done == 0:
            raise DataError(f"no readable training image in epoch {epoch + 1} of {spec.name} "
                            f"({data.bad_count} unreadable file(s) skipped)")
        history.append({"epoch": epoch + 1, **{key: v / done for key, v in sums.items()}})
        log.info("epoch %d: %s", epoch + 1, history[-1])
    if heads is not None and scalers:  # the standardisation goes into each width's head: raw features in
        heads.fold(scalers)
    rows, bank = evaluate_task_model(model, data.calib, data.test, eval_widths, cfg.calib_batches, device, heads)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else Path(cfg.checkpoint).parent / ("linear" if cfg.freeze_backbone else "finetune")
    state = {key: v.detach().cpu().clone() for key, v in strip_prefixes(model.state_dict()).items()}
    trained_by = "scratch" if cfg.init == "scratch" else ("frozen-backbone" if cfg.freeze_backbone else "finetune")
    task = task_info(spec, ckpt.content_hash, cfg.head, trained_by, size)
    extra: dict[str, Any] = {"task": task, "parent": {"method": ckpt.method, "sha256": ckpt.content_hash}}
    if heads is not None:
        extra["heads"] = heads.state()
    else:
        extra["head"] = {"weight": state.pop("fc.weight"), "bias": state.pop("fc.bias")}
    arch_kwargs = dict(ckpt.arch_kwargs)
    if "input_size" in arch_kwargs:
        arch_kwargs["input_size"] = size
    result = Checkpoint(arch=ckpt.arch, arch_kwargs=arch_kwargs, model=state,
                        width_range=(lo, hi) if cfg.train_width is not None else (ckpt.width_range[0], ckpt.width_range[1]),
                        method="finetune", epoch=cfg.epochs, train_config={"finetune": asdict(cfg)},
                        dataset=spec.to_dict(), bn_bank=bank, training=None, extra=extra)
    ckpt_path = out_dir / "checkpoint.pt"
    digest = save_checkpoint(result, ckpt_path)
    protocol = {"method": "top1", "trained_by": trained_by, "head": cfg.head, "dataset": spec.to_dict(),
                "bn_calibration": "cumulative", "calib_batches": cfg.calib_batches, "divisor": DEFAULT_DIVISOR,
                "epochs": cfg.epochs, "seed": cfg.seed, "augment": data.augment,
                "label_smoothing": smoothing}
    acc_path = out_dir / ACCURACY_FILE
    from us3l.core.accuracy import table_rows
    from us3l.core.taskmodel import classifier_state_hash, state_hashes

    # the rows belong to the classifier state just saved (backbone, head, and the BN bank measured)
    rows = [{**r, "outputs": "logits", "sha256": classifier_state_hash(result), "bn": "bank"} for r in rows]
    details = {k: v for k, v in protocol.items() if k != "method"}
    _, _, note = update_accuracy(acc_path, digest, table_rows(rows, details), state_hashes(result))
    if note:
        log.info("%s", note)
    if cfg.init == "checkpoint":
        late = undertrained_notices(rows, cfg.checkpoint, ckpt, spec)
        for n in late:
            log.info("notice: %s", n)
        notices += late
    return FinetuneOutcome(ckpt_path, acc_path, rows, digest, time.perf_counter() - t0, history, notices)


def evaluate_task_model(model: SlimmableNet, calib: Iterable[Tensor], test: Iterable[tuple[Tensor, Tensor]],
                        widths: list[float], calib_batches: int, device: torch.device | str = "cpu",
                        heads: PerWidthHeads | None = None,
                        ) -> tuple[list[dict[str, Any]], dict[str, dict[str, dict[str, Tensor]]]]:
    """Recalibrate BN at each width on ``calib`` (un-augmented training images in a fixed seeded
    order, at most ``calib_batches`` batches), then top-1 on ``test`` batch by batch (through the
    width's own head with ``heads``, else the model's ``fc``). Returns ``(rows, BN bank)``."""
    rows, bank = [], {}
    for w in widths:
        calibrate_bn(model, calib, w, num_batches=calib_batches, device=device)
        bank[format_width(w)] = {n: {"mean": s["mean"].cpu(), "var": s["var"].cpu()} for n, s in bn_stats(model, w).items()}
        model.eval()
        correct = seen = 0
        total = len(test) if isinstance(test, Sized) else None
        with torch.no_grad(), use_width(model, w), \
                stage(f"top-1 w{format_width(w)}", total=total, unit="images") as counted:
            for x, y in test:
                out = model(x.to(device))
                logits = out if heads is None else heads(out, w)
                correct += int((logits.argmax(1).cpu() == y).sum())
                seen += len(y)
                counted.update(seen)
        if seen == 0:
            raise DataError("no readable test image to measure top-1 on")
        row = {"width": round_width(w), "precision": "fp32", "feature_dim": int(model.feature_dim(w)),
               "top1": correct / seen, "source": "pytorch"}
        if heads is not None:
            row["head"] = heads.key_for(w)
        rows.append(row)
        log.info("width %s: top-1 %.4f", format_width(w), rows[-1]["top1"])
    return rows, bank


def write_probe_classifier(ckpt: Checkpoint, heads: dict[str, Any], spec: DatasetSpec, path: str | Path) -> Path:
    """Save ``us3l eval --method linear``'s probes as a task checkpoint (per-width heads).

    Args:
        ckpt: the evaluated checkpoint (its backbone is kept as is).
        heads: ``{format_width(w): {"weight", "bias", "bn"}}`` from ``evaluate_checkpoint(heads_out=...)``.
        spec: the evaluation data (class names, normalisation, preprocessing).
        path: destination (written atomically).
    """
    bank = dict(ckpt.bn_bank)
    bank.update({w: {n: {"mean": s["mean"].cpu(), "var": s["var"].cpu()} for n, s in h["bn"].items()} for w, h in heads.items()})
    probe_heads = {w: {"weight": h["weight"].cpu(), "bias": h["bias"].cpu()} for w, h in heads.items()}
    task = task_info(spec, ckpt.content_hash, "per-width", "linear-probe", default_image_size(spec))
    out = Checkpoint(arch=ckpt.arch, arch_kwargs=dict(ckpt.arch_kwargs), model=ckpt.model, width_range=(ckpt.width_range[0], ckpt.width_range[1]),
                     method=ckpt.method, epoch=ckpt.epoch, train_config={}, dataset=spec.to_dict(), bn_bank=bank,
                     training=None, extra={"heads": probe_heads, "task": task,
                                           "parent": {"method": ckpt.method, "sha256": ckpt.content_hash}})
    save_checkpoint(out, path)
    return Path(path)
