"""Named training presets: the paper's shipped configurations (docs/method.md §12, §13) and the digits default.

``get_recipe(name)`` returns a :class:`~us3l.train.config.TrainConfig`; CLI flags then override
fields with ``cfg.replace(...)``. Batch sizes are per process (the reference's "batch/GPU");
launch with ``torchrun --nproc_per_node=<GPUs>`` to reproduce the global batch. The exception is
the ViT recipe, whose 512 is the global batch (``global_batch=True``), as in MoCo v3.
"""

from __future__ import annotations

from collections.abc import Callable

from us3l.core.registry import Registry

from .config import TrainConfig

_RECIPES: Registry[Callable[[], TrainConfig]] = Registry("recipe")
_recipe = _RECIPES.register


def list_recipes() -> list[str]:
    """Sorted recipe names."""
    return _RECIPES.names()


def get_recipe(name: str) -> TrainConfig:
    """The preset ``name``.

    Raises:
        UnknownNameError: unknown recipe (the message lists the valid ones).

    Examples:
        >>> get_recipe("cifar100_r18_simclr").lr
        0.5
    """
    return _RECIPES.get(name)()


def recipe_doc(name: str) -> str:
    """First line of the recipe's docstring (for listings)."""
    fn = _RECIPES.get(name)
    return (fn.__doc__ or "").strip().splitlines()[0]


# ---------------------------------------------------------------- the embedded default


@_recipe("digits")
def digits() -> TrainConfig:
    """Fast CPU default: us_resnet_mini on scikit-learn digits (16 px), SimCLR-momentum US3L, 13 ep, 32, lr 0.1."""
    # Small batches give more SGD steps in the ~3-minute CPU budget; plain sandwich from epoch 0
    # (schedule A would leave the sub-networks untrained for a quarter of a very short run).
    return TrainConfig()


# ---------------------------------------------------------------- Fashion-MNIST on a CPU


@_recipe("fashion_mnist")
def fashion_mnist() -> TrainConfig:
    """CPU recipe: us_resnet_mini on Fashion-MNIST (28 px, gray x3), SimCLR-momentum US3L, 5 ep, 128, lr 0.1."""
    # us_resnet_mini over us_resnet18_cifar: fwd+bwd at width 1.0, 28 px, batch 64, one thread,
    # measured 119 vs 13 img/s. US3L (3 widths + teacher per iteration) ran at 21-25 img/s with
    # batch 128 on one (shared) core: one epoch of the 60,000 images is ~45 min per core.
    return TrainConfig(arch="us_resnet_mini", data="fashion-mnist", image_size=28, epochs=5, batch_size=128, lr=0.1)


# ---------------------------------------------------------------- CIFAR-100, SimCLR-momentum


_SIMCLR = dict(ssl="simclr_momentum", proj_hidden_dim=2048, proj_out_dim=256, pred_hidden_dim=2048, temperature=0.5,
               crop_scale_min=0.2, weight_decay=1e-4, group_reg=True, ema_momentum=0.99, num_widths=3,
               sandwich=True, amp=False, drop_last=False)  # the SimCLR configs keep the last batch (docs/method.md §12)
_R50_FEATURES = ("layer2.3.bn2", "layer3.5.bn2", "layer4.2.bn2")


@_recipe("cifar100_r18_simclr")
def cifar100_r18_simclr() -> TrainConfig:
    """README main: R18 CIFAR-100, SimCLR-momentum, schedule A, GroupReg W0, 400 ep, 128x4, lr 0.5."""
    return TrainConfig(arch="us_resnet18_cifar", data="cifar100", epochs=400, batch_size=128, lr=0.5,
                       schedule="A", group_reg_warmup=0, **_SIMCLR)


@_recipe("cifar100_r50_simclr")
def cifar100_r50_simclr() -> TrainConfig:
    """R50 CIFAR-100, SimCLR-momentum + feature distillation, plain sandwich, GroupReg W200, 64x8, lr 0.25."""
    return TrainConfig(arch="us_resnet50_cifar", data="cifar100", epochs=400, batch_size=64, lr=0.25,
                       schedule="", group_reg_warmup=200, feature_distill=True, distill_layers=_R50_FEATURES,
                       **_SIMCLR)


@_recipe("cifar100_mbv2_simclr")
def cifar100_mbv2_simclr() -> TrainConfig:
    """MobileNetV2 CIFAR-100, SimCLR-momentum, plain sandwich, GroupReg W200, 128x4, lr 0.5."""
    return TrainConfig(arch="us_mobilenet_v2_cifar", data="cifar100", epochs=400, batch_size=128, lr=0.5,
                       schedule="", group_reg_warmup=200, **_SIMCLR)


# ---------------------------------------------------------------- BYOL (ImageNet and CIFAR alternatives)


_BYOL = dict(ssl="byol", proj_hidden_dim=2048, proj_out_dim=2048, pred_hidden_dim=2048, group_reg=True,
             crop_scale_min=0.2,
             ema_momentum=0.99, num_widths=3, sandwich=True, schedule="A")


@_recipe("imagenet_r50_byol")
def imagenet_r50_byol() -> TrainConfig:
    """README main: R50 ImageNet (image folder), BYOL, schedule A, GroupReg W50, 100 ep, 60x8, lr 0.05, AMP."""
    return TrainConfig(arch="us_resnet50", data="imagefolder", epochs=100, batch_size=60, lr=0.05, weight_decay=1e-4,
                       group_reg_warmup=50, amp=True, **_BYOL)


@_recipe("imagenet_r18_byol")
def imagenet_r18_byol() -> TrainConfig:
    """R18 ImageNet (image folder), BYOL, schedule A, GroupReg W50, 100 ep, 128x8, lr 0.05, AMP."""
    return TrainConfig(arch="us_resnet18", data="imagefolder", epochs=100, batch_size=128, lr=0.05, weight_decay=1e-4,
                       group_reg_warmup=50, amp=True, **_BYOL)


@_recipe("cifar100_r18_byol")
def cifar100_r18_byol() -> TrainConfig:
    """BYOL alternative: R18 CIFAR-100, lr 0.05, plain SGD wd 5e-4 (no GroupReg), schedule A, 400 ep, 128x4."""
    # The reference config has REGULARIZER: False (docs/method.md §12): weight decay on every parameter.
    return TrainConfig(arch="us_resnet18_cifar", data="cifar100", epochs=400, batch_size=128, lr=0.05,
                       weight_decay=5e-4, **{**_BYOL, "group_reg": False}, drop_last=True)


@_recipe("cifar100_r50_byol")
def cifar100_r50_byol() -> TrainConfig:
    """BYOL alternative: R50 CIFAR-100 + feature distillation, GroupReg 2.5e-4 W200, 800 ep, 64x8, lr 0.05."""
    return TrainConfig(arch="us_resnet50_cifar", data="cifar100", epochs=800, batch_size=64, lr=0.05,
                       weight_decay=5e-4, group_reg_warmup=200, feature_distill=True, distill_layers=_R50_FEATURES,
                       drop_last=True, **_BYOL)


@_recipe("cifar100_mbv2_byol")
def cifar100_mbv2_byol() -> TrainConfig:
    """BYOL alternative: MobileNetV2 CIFAR-100, GroupReg 2.5e-4 W200, 800 ep, 128x4, lr 0.05."""
    return TrainConfig(arch="us_mobilenet_v2_cifar", data="cifar100", epochs=800, batch_size=128, lr=0.05,
                       weight_decay=5e-4, group_reg_warmup=200, drop_last=True, **_BYOL)


# ---------------------------------------------------------------- ViT (docs/method.md §13)


@_recipe("vit_tiny_mocov3_cifar10")
def vit_tiny_mocov3_cifar10() -> TrainConfig:
    """us_vit_tiny, MoCo v3 on CIFAR-10 at 224, global batch 512, AdamW 1.5e-4*512/256, 300 ep (40 warm-up)."""
    # docs/method.md §13: 512 is the global batch (64/GPU x 8), the lr follows it; MLP hidden 2048
    # (run_ofa.sh); BYOL-style asymmetric views with crops from 0.08; lr ramped every iteration.
    batch = 512
    return TrainConfig(arch="us_vit_tiny", arch_kwargs={"patch_size": 16}, data="cifar10", image_size=224,
                       ssl="mocov3", temperature=0.2, proj_hidden_dim=2048, proj_out_dim=256, pred_hidden_dim=2048,
                       optimizer="adamw", lr=1.5e-4 * batch / 256, weight_decay=0.1, group_reg=False,
                       epochs=300, lr_warmup_epochs=40, lr_per_iteration=True, batch_size=batch, global_batch=True,
                       augmentation="asymmetric", crop_scale_min=0.08, drop_last=True,
                       ema_momentum=0.99, ema_cosine=True, schedule="A", num_widths=3, sandwich=True, amp=True)
