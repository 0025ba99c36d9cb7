"""The one training configuration: a frozen, ``asdict``-able dataclass validated on construction.

Every field is a plain scalar, string or tuple so ``dataclasses.asdict(cfg)`` is JSON-like and
travels inside the checkpoint (``Checkpoint.train_config``). Named presets live in
:mod:`us3l.trainer.recipes`; the CLI builds one of these and calls :func:`us3l.trainer.loop.run_training`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from us3l.core.errors import ConfigError

METHODS = ("us3l", "naive", "naive-contrastive", "single")
SSL_TYPES = ("simclr_momentum", "byol", "mocov3")
SCHEDULES = ("A", "")
OPTIMIZERS = ("sgd", "adamw")
DEVICES = ("auto", "cpu", "cuda")
AUGMENTATIONS = ("auto", "color", "gray")  # "auto": chosen from the data's channels when the run starts
VIEW_PAIRS = ("symmetric", "asymmetric")

# Fields that may differ between a run and its resumption (they do not change the maths).
RESUME_IGNORED = ("resume", "overwrite", "out_dir", "device", "log_interval", "fail_on_collapse", "threads", "tensorboard",
                  "channels_last", "workers", "prefetch", "on_bad_image", "eval_every", "eval_images", "eval_bank")
BAD_IMAGE_POLICIES = ("skip", "fail")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one ``us3l train`` run needs; the defaults are the fast digits recipe.

    Attributes are grouped as: model, data, method, optimisation, widths, EMA, distillation,
    group regularisation, runtime. ``group_reg_lambda=None`` means ``weight_decay / 2`` (the
    README rule, docs/method.md §9); with ``group_reg=True`` the optimizer's weight decay is 0.
    """

    # model
    arch: str = "us_resnet_mini"
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    proj_hidden_dim: int = 256
    proj_out_dim: int = 64
    pred_hidden_dim: int = 256
    # data
    data: str = "digits"
    data_root: str | None = None
    image_size: int | None = None  # None: the dataset's default size
    crop_scale_min: float = 0.3
    blur: bool | None = None  # None: the augmentation's own default (on for ImageNet-size inputs)
    # "color": the MoCo-v2 pipeline (docs/method.md §12.2); "gray": views that exist in grey images (no
    # saturation, hue or grayscale ops; affine, erasing, noise); "auto": gray when every image of the data
    # is grey (digits, Fashion-MNIST, grey folders), else color. The resolved config records the choice.
    augmentation: str = "auto"
    # "symmetric": both views from one pipeline; "asymmetric": the BYOL-style color pair of MoCo v3
    # (blur p 1.0 / 0.1, solarize p 0 / 0.2, jitter saturation 0.2; docs/method.md §13)
    views: str = "symmetric"
    drop_last: bool = True  # False: also train on the last, smaller batch of each epoch (if >= 2 images)
    # input pipeline (image files; us3l.trainer.pipeline): loader processes (None: from the CPU count),
    # batches prefetched per process, and what a bad image file does ("skip": count + warn, "fail": stop)
    workers: int | None = None
    prefetch: int = 2
    on_bad_image: str = "skip"
    # method
    # "us3l" | "naive" (the reference's naive configuration: online SimCLR at the max width, sub-widths
    # distilled to its detached online output) | "naive-contrastive" (online SimCLR at every width) |
    # "single" (one width, plain SSL)
    method: str = "us3l"
    ssl: str = "simclr_momentum"  # "simclr_momentum" | "byol" | "mocov3"
    temperature: float | None = None  # None: 0.5 (SimCLR) / 0.2 (MoCo v3); unused by BYOL
    single_width: float = 1.0
    # optimisation
    epochs: int = 13
    batch_size: int = 32  # per process, or the global batch with global_batch=True
    global_batch: bool = False  # batch_size is split over the processes (per process = batch_size / world)
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_warmup_epochs: int = 0  # linear warm-up then cosine (only the ViT recipe uses it)
    lr_per_iteration: bool = False  # warm-up and cosine at fractional epochs, every iteration (MoCo v3)
    accumulate: bool = False  # False: one optimizer step per width (reference); True: one per iteration
    amp: bool = False  # mixed precision; only effective on CUDA
    channels_last: bool = False  # NHWC memory format for the model and the views (faster convs on GPUs)
    # widths
    width_min: float = 0.25
    width_max: float = 1.0
    num_widths: int = 3
    sandwich: bool = True
    schedule: str = ""  # dynamic sampling "A" or "" (plain sandwich from epoch 0)
    # EMA teacher
    ema_momentum: float = 0.99
    ema_cosine: bool = False  # cosine schedule ema_momentum -> 1.0 (MoCo v3)
    # distillation
    feature_distill: bool = False
    distill_layers: tuple[str, ...] = ()
    # group regularisation; None: the method's default, off for "naive" (the reference's naive
    # configuration trains with plain SGD weight decay) and on otherwise
    group_reg: bool | None = None
    group_reg_lambda: float | None = None
    group_reg_alpha: float = 0.05
    group_reg_bins: int = 8
    group_reg_warmup: int = 0
    # runtime
    seed: int = 100
    threads: int = 0  # CPU threads (0: auto, one per CPU other processes leave idle; us3l.core.threads)
    device: str = "auto"
    out_dir: str = "runs/us3l"
    resume: bool = False
    overwrite: bool = False  # replace an existing run in out_dir (default: refuse, naming --resume/--overwrite)
    log_interval: int = 20
    save_every: int = 1
    tensorboard: bool = True
    fail_on_collapse: bool = False
    collapse_batch: int = 256
    collapse_std_ratio: float = 0.1  # collapse when std(z/|z|) * sqrt(d) falls below this
    max_steps_per_epoch: int | None = None  # cap iterations per epoch (tests, smoke runs)
    # learning curves: every eval_every epochs (0: never) a kNN (k=20) of eval_images fixed held-out
    # images against eval_bank fixed training images, at the smallest and largest width
    eval_every: int = 0
    eval_images: int = 1000
    eval_bank: int = 5000

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_kwargs", dict(self.arch_kwargs))
        object.__setattr__(self, "distill_layers", tuple(self.distill_layers))
        problems = list(_problems(self))
        if problems:
            raise ConfigError("invalid training configuration: " + "; ".join(problems))

    @property
    def use_group_reg(self) -> bool:
        """Whether group regularisation replaces weight decay (``group_reg``, else the method's default)."""
        return self.method != "naive" if self.group_reg is None else bool(self.group_reg)

    def resolved(self, gray: bool) -> TrainConfig:
        """This configuration with its data- and method-dependent defaults made explicit.

        Args:
            gray: whether every image of the training data is grey (decides ``augmentation="auto"``).
        """
        aug = self.augmentation
        if aug == "auto":  # the asymmetric pair exists in color only
            aug = "gray" if gray and self.views == "symmetric" else "color"
        return dataclasses.replace(self, augmentation=aug, group_reg=self.use_group_reg)

    @property
    def reg_lambda(self) -> float:
        """The group-regularisation coefficient (``weight_decay / 2`` unless given)."""
        return self.weight_decay / 2 if self.group_reg_lambda is None else self.group_reg_lambda

    @property
    def loss_temperature(self) -> float:
        """Contrastive temperature of the chosen SSL loss."""
        if self.temperature is not None:
            return self.temperature
        return 0.2 if self.ssl == "mocov3" else 0.5

    def to_dict(self) -> dict[str, Any]:
        """``dataclasses.asdict`` (tuples kept, everything plain)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys raise :class:`ConfigError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        if data.get("augmentation") in VIEW_PAIRS:  # configs written before "views" existed (always color)
            data["views"] = data["augmentation"]
            data["augmentation"] = "color"
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
        return cls(**data)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated); ``None`` values are ignored."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return self.from_dict({**self.to_dict(), **changes})


def _choice(name: str, value: Any, valid: tuple) -> str | None:
    if value not in valid:
        return f"{name} {value!r} is not one of {', '.join(repr(v) for v in valid)}"
    return None


def _problems(c: TrainConfig):
    for name, value, valid in (("method", c.method, METHODS), ("ssl", c.ssl, SSL_TYPES),
                               ("schedule", c.schedule, SCHEDULES), ("optimizer", c.optimizer, OPTIMIZERS),
                               ("augmentation", c.augmentation, AUGMENTATIONS), ("views", c.views, VIEW_PAIRS),
                               ("on_bad_image", c.on_bad_image, BAD_IMAGE_POLICIES)):
        msg = _choice(name, value, valid)
        if msg:
            yield msg
    if not (c.device in DEVICES or c.device.startswith("cuda:")):
        yield f"device {c.device!r} is not one of auto, cpu, cuda, cuda:N"
    for name in ("epochs", "batch_size", "num_widths", "log_interval", "save_every", "group_reg_bins",
                 "proj_hidden_dim", "proj_out_dim", "pred_hidden_dim", "collapse_batch"):
        if int(getattr(c, name)) < 1:
            yield f"{name} must be >= 1, got {getattr(c, name)}"
    if c.batch_size < 2:
        yield f"batch_size must be >= 2 (batch-norm and contrastive negatives), got {c.batch_size}"
    if c.workers is not None and c.workers < 0:
        yield f"workers must be >= 0 (0: decode in the training process), got {c.workers}"
    if c.prefetch < 1:
        yield f"prefetch must be >= 1, got {c.prefetch}"
    if c.views == "asymmetric" and c.augmentation == "gray":
        yield "views 'asymmetric' is the color BYOL pair of MoCo v3; use augmentation 'color' (or views 'symmetric')"
    for name in ("eval_images", "eval_bank"):
        if int(getattr(c, name)) < 2:
            yield f"{name} must be >= 2, got {getattr(c, name)}"
    for name in ("lr_warmup_epochs", "group_reg_warmup", "threads", "eval_every"):
        if int(getattr(c, name)) < 0:
            yield f"{name} must be >= 0, got {getattr(c, name)}"
    if c.max_steps_per_epoch is not None and c.max_steps_per_epoch < 1:
        yield f"max_steps_per_epoch must be >= 1 or None, got {c.max_steps_per_epoch}"
    if not c.lr > 0:
        yield f"lr must be > 0, got {c.lr}"
    if not 0 <= c.momentum < 1:
        yield f"momentum must be in [0, 1), got {c.momentum}"
    if c.resume and c.overwrite:
        yield "resume and overwrite exclude each other: continue the run in out_dir, or replace it"
    if not math.isfinite(c.weight_decay) or c.weight_decay < 0 or (c.group_reg_lambda is not None and c.group_reg_lambda < 0):
        yield "weight_decay and group_reg_lambda must be >= 0"
    if not 0 < c.width_min <= c.width_max <= 1.0:
        yield f"width range ({c.width_min}, {c.width_max}) is invalid; valid: 0 < width_min <= width_max <= 1.0"
    if c.method == "single" and not c.width_min - 1e-9 <= c.single_width <= c.width_max + 1e-9:
        yield f"single_width {c.single_width} lies outside the width range [{c.width_min}, {c.width_max}]"
    if c.sandwich and c.num_widths < 2 and c.method != "single":
        yield f"the sandwich rule needs num_widths >= 2, got {c.num_widths}"
    if not 0 <= c.ema_momentum <= 1:
        yield f"ema_momentum must be in [0, 1], got {c.ema_momentum}"
    if c.temperature is not None and not c.temperature > 1e-8:
        yield f"temperature must be > 0, got {c.temperature}"
    if not 0 < c.crop_scale_min <= 1:
        yield f"crop_scale_min must be in (0, 1], got {c.crop_scale_min}"
    if c.feature_distill and not c.distill_layers:
        yield "feature_distill needs distill_layers (backbone BN names such as 'layer2.0.bn2')"
    if c.feature_distill and c.method != "us3l":
        yield "feature_distill is only defined for method 'us3l'"
    if c.method in ("naive", "naive-contrastive") and c.ssl != "simclr_momentum":
        yield (f"method {c.method!r} is US-Net + online SimCLR; use ssl 'simclr_momentum' (its loss is chosen by "
               "the method)")
    if c.image_size is not None and c.image_size < 4:
        yield f"image_size must be >= 4, got {c.image_size}"
    if not 0 < c.collapse_std_ratio < 1:
        yield f"collapse_std_ratio must be in (0, 1), got {c.collapse_std_ratio}"
