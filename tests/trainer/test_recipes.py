"""Recipes reproduce docs/method.md §12/§13, and TrainConfig validation speaks in ConfigError lines."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from us3l.trainer.config import TrainConfig
from us3l.trainer.recipes import get_recipe, list_recipes
from us3l.core.errors import ConfigError, UnknownNameError
from us3l.core.models import list_models

PAPER = [
    "cifar100_r18_simclr", "cifar100_r50_simclr", "cifar100_mbv2_simclr", "imagenet_r50_byol", "imagenet_r18_byol",
    "cifar100_r18_byol", "cifar100_r50_byol", "cifar100_mbv2_byol", "vit_tiny_mocov3_cifar10",
]


def test_every_recipe_is_listed_valid_and_round_trips():
    assert set(PAPER) | {"digits", "fashion_mnist"} == set(list_recipes())
    for name in list_recipes():
        cfg = get_recipe(name)
        assert cfg.arch in list_models(), f"{name}: unknown arch {cfg.arch}"
        again = TrainConfig.from_dict(cfg.to_dict())
        assert again == cfg
        torch.save(cfg.to_dict(), "/dev/null")  # plain data only


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="unknown recipe 'cifar'; valid: .*cifar100_r18_simclr.*digits"):
        get_recipe("cifar")


@pytest.mark.parametrize("name,expect", [
    ("cifar100_r18_simclr", dict(arch="us_resnet18_cifar", ssl="simclr_momentum", epochs=400, batch_size=128, lr=0.5,
                                 schedule="A", group_reg_warmup=0, proj_out_dim=256, feature_distill=False, amp=False)),
    ("cifar100_r50_simclr", dict(arch="us_resnet50_cifar", batch_size=64, lr=0.25, schedule="", group_reg_warmup=200,
                                 feature_distill=True,
                                 distill_layers=("layer2.3.bn2", "layer3.5.bn2", "layer4.2.bn2"))),
    ("cifar100_mbv2_simclr", dict(arch="us_mobilenet_v2_cifar", lr=0.5, schedule="", group_reg_warmup=200)),
    ("imagenet_r50_byol", dict(arch="us_resnet50", data="imagefolder", ssl="byol", epochs=100, batch_size=60,
                               lr=0.05, group_reg_warmup=50, amp=True, proj_out_dim=2048, feature_distill=False)),
    ("imagenet_r18_byol", dict(arch="us_resnet18", ssl="byol", batch_size=128, lr=0.05, amp=True)),
    ("cifar100_r18_byol", dict(ssl="byol", lr=0.05, weight_decay=5e-4, group_reg=False)),
    ("cifar100_r50_byol", dict(epochs=800, group_reg_warmup=200, feature_distill=True)),
    ("vit_tiny_mocov3_cifar10", dict(arch="us_vit_tiny", ssl="mocov3", optimizer="adamw", lr=1.5e-4 * 2,
                                     weight_decay=0.1, epochs=300, lr_warmup_epochs=40, ema_cosine=True,
                                     temperature=0.2, image_size=224, group_reg=False, crop_scale_min=0.08,
                                     proj_hidden_dim=2048, pred_hidden_dim=2048, proj_out_dim=256, batch_size=512,
                                     global_batch=True, views="asymmetric", lr_per_iteration=True)),
])
def test_recipes_match_the_paper_configs(name, expect):
    cfg = get_recipe(name)
    for key, value in expect.items():
        assert getattr(cfg, key) == value, f"{name}.{key}"
    assert cfg.num_widths == 3 and cfg.sandwich and cfg.width_min == 0.25 and cfg.width_max == 1.0
    if cfg.use_group_reg:  # GroupReg replaces weight decay with lambda = wd / 2 (docs/method.md §9)
        assert cfg.reg_lambda == pytest.approx(cfg.weight_decay / 2)
        assert cfg.group_reg_alpha == 0.05 and cfg.group_reg_bins == 8
    if cfg.ssl != "mocov3":
        assert cfg.crop_scale_min == 0.2  # RandomResizedCrop scale (0.2, 1.0), docs/method.md §12.2
        assert cfg.ema_momentum == 0.99 and not cfg.ema_cosine and cfg.momentum == 0.9


@pytest.mark.parametrize("changes,message", [
    (dict(method="fancy"), "method 'fancy' is not one of 'us3l', 'naive', 'naive-contrastive', 'single'"),
    (dict(ssl="dino"), "ssl 'dino' is not one of"),
    (dict(width_min=0.5, width_max=0.4), "width range"),
    (dict(method="single", single_width=0.1), "single_width 0.1 lies outside"),
    (dict(batch_size=1), "batch_size must be >= 2"),
    (dict(feature_distill=True), "needs distill_layers"),
    (dict(method="naive", ssl="byol"), "method 'naive' is US-Net \\+ online SimCLR"),
    (dict(method="naive-contrastive", ssl="mocov3"), "method 'naive-contrastive' is US-Net \\+ online SimCLR"),
    (dict(augmentation="gray", views="asymmetric"), "views 'asymmetric' is the color BYOL pair"),
    (dict(eval_every=-1), "eval_every must be >= 0"),
    (dict(eval_images=1), "eval_images must be >= 2"),
    (dict(schedule="B"), "schedule 'B'"),
    (dict(device="tpu"), "device 'tpu'"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(augmentation="strong"), "augmentation 'strong' is not one of 'auto', 'color', 'gray'"),
    (dict(views="both"), "views 'both' is not one of 'symmetric', 'asymmetric'"),
])
def test_invalid_configs_raise_config_error(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_replace_ignores_none_and_rejects_unknown_fields():
    cfg = TrainConfig()
    assert cfg.replace(lr=None, epochs=3).epochs == 3
    with pytest.raises(ConfigError, match="unknown training option\\(s\\) nope"):
        cfg.replace(nope=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_byol_cifar_r18_is_plain_weight_decay_and_cifar_byol_drops_the_last_batch():
    """Item 2: the reference R18 BYOL-CIFAR config has REGULARIZER False (SGD wd 5e-4 on all parameters);
    BYOL-CIFAR recipes drop the last batch, the SimCLR ones keep it.

    Old behaviour caught: GroupReg 2.5e-4 on R18 BYOL, and the last batch always dropped.
    """
    cfg = get_recipe("cifar100_r18_byol")
    assert not cfg.group_reg and cfg.weight_decay == 5e-4 and cfg.optimizer == "sgd"
    for name in ("cifar100_r18_byol", "cifar100_r50_byol", "cifar100_mbv2_byol"):
        assert get_recipe(name).drop_last, name
    for name in ("cifar100_r18_simclr", "cifar100_r50_simclr", "cifar100_mbv2_simclr"):
        assert not get_recipe(name).drop_last, name
    assert get_recipe("cifar100_r50_byol").use_group_reg  # R50 / MBv2 BYOL keep GroupReg 2.5e-4
    assert get_recipe("cifar100_r50_byol").reg_lambda == pytest.approx(2.5e-4)


def test_vit_recipe_batch_is_global_and_lr_follows_it():
    """Item 3: 512 is the global batch: 64 per process on 8, lr from 512 whatever the process count.

    Old behaviour caught: 512 per process (4096 global on 8 GPUs) with the lr of 512.
    """
    from us3l.trainer.runtime import per_process_batch

    cfg = get_recipe("vit_tiny_mocov3_cifar10")
    assert per_process_batch(cfg.batch_size, cfg.global_batch, 8) == 64
    assert per_process_batch(cfg.batch_size, cfg.global_batch, 1) == 512
    assert cfg.lr == pytest.approx(1.5e-4 * 512 / 256)
    assert per_process_batch(32, False, 4) == 32  # other recipes: per process
    with pytest.raises(ConfigError, match="global batch 512 cannot be split evenly .* 3 process"):
        per_process_batch(512, True, 3)


def test_method_and_data_dependent_defaults_resolve_explicitly():
    """GroupReg defaults to off for the reference's naive configuration only; "auto" views become gray or color;
    ``resolved`` makes both explicit (what config.toml and the checkpoint record)."""
    assert TrainConfig().group_reg is None and TrainConfig().use_group_reg
    assert not TrainConfig(method="naive").use_group_reg and TrainConfig(method="naive-contrastive").use_group_reg
    assert TrainConfig(method="naive", group_reg=True).use_group_reg  # an explicit choice wins
    r = TrainConfig(method="naive").resolved(gray=True)
    assert (r.augmentation, r.group_reg) == ("gray", False)
    assert TrainConfig().resolved(gray=False).augmentation == "color"
    assert TrainConfig(augmentation="color").resolved(gray=True).augmentation == "color"
    assert TrainConfig(views="asymmetric").resolved(gray=True).augmentation == "color"  # the pair exists in color only
    # configs written before "views" existed (augmentation symmetric|asymmetric, always color) still load
    old = TrainConfig.from_dict({**TrainConfig().to_dict(), "augmentation": "asymmetric"})
    assert (old.views, old.augmentation) == ("asymmetric", "color")


# every control character, quotes, backslashes, non-ASCII and astral characters
AWKWARD = "".join(chr(c) for c in range(32)) + "\x7f\"'\\ é 中 💥 [a] = {b} # c"


def test_print_config_round_trips_every_string(tmp_path):
    """config.toml / --print-config are written by tomli-w: reading them back gives the same config,
    strings with \\r, NUL and every other control character included."""
    from typer.testing import CliRunner

    from us3l.cli.main import app
    from us3l.trainer.config_file import load_file, to_toml
    from us3l.trainer.recipes import resolve

    for name in list_recipes():
        cfg = get_recipe(name).replace(data_root=AWKWARD, out_dir=AWKWARD[::-1],
                                      arch_kwargs={"input_size": 8, "note": AWKWARD})
        path = tmp_path / f"{name}.toml"
        path.write_text(to_toml(cfg, header="a header\nover two lines"), encoding="utf-8")
        _, fields = load_file(path)
        assert TrainConfig.from_dict({**TrainConfig().to_dict(), **fields}) == cfg, name
        assert resolve(config=path) == cfg
    printed = CliRunner().invoke(app, ["train", "--print-config", "--data-root", "a\rb\x01c", "--out", "o\x7fp"])
    assert printed.exit_code == 0, printed.output
    (tmp_path / "printed.toml").write_text(printed.stdout, encoding="utf-8")
    again = resolve(config=tmp_path / "printed.toml")
    assert (again.data_root, again.out_dir) == ("a\rb\x01c", "o\x7fp")
