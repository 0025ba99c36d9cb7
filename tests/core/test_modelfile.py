"""Packed model directories (``us3l pack``): timm's Hub layout, sealed weights, a config validated
against the weights, no paths of the packing machine, ``--reseal``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.errors import CheckpointError
from us3l.core.modelfile import pack_checkpoint, reseal

US3L = [sys.executable, "-m", "us3l.cli.main"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """A task checkpoint (shared head, 10 classes, BN bank at 0.25 and 1.0) trained 'on' Fashion-MNIST
    from an absolute data folder, with its accuracy table, packed."""
    from us3l.core.bn import bn_stats
    from us3l.core.data import DatasetSpec
    from us3l.core.models import get_model
    from us3l.core.taskmodel import task_info

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    net = get_model("us_resnet_mini")
    spec = DatasetSpec("fashion-mnist", "/usr/share/datasets/fashion-mnist", 16)
    ckpt = Checkpoint.from_model(net, method="finetune", dataset=spec.to_dict(),
                                 train_config={"data_root": spec.root, "out_dir": str(run / "ft"), "lr": 0.1})
    for w in (0.25, 1.0):
        ckpt.add_bn_stats(w, bn_stats(net, w))
    ckpt.extra["head"] = {"weight": torch.randn(10, net.max_feature_dim), "bias": torch.zeros(10)}
    ckpt.extra["task"] = task_info(spec, "0" * 64, "shared", "finetune", 16)
    content = save_checkpoint(ckpt, run / "checkpoint.pt")
    accuracy = {"checkpoint": content, "protocol": {"method": "top1"},
                "results": [{"width": 0.25, "top1": 0.81}, {"width": 1.0, "top1": 0.9}]}
    (run / "accuracy.json").write_text(json.dumps(accuracy))
    import us3l

    us3l.pack(run / "checkpoint.pt", run / "model")
    return run / "model"


def _copy(packed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(packed, tmp_path / "model"))


def _edit_config(d: Path, **changes) -> None:
    config = json.loads((d / "config.json").read_text())
    config.update(changes)
    (d / "config.json").write_text(json.dumps(config, indent=2))


def test_layout_follows_timm_and_the_card_has_front_matter(packed):
    config = json.loads((packed / "config.json").read_text())
    assert {"architecture", "num_classes", "label_names", "num_features", "model_args", "pretrained_cfg"} <= set(config)
    assert config["architecture"] == "us_resnet_mini" and config["num_classes"] == 10 and config["num_features"] == 128
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 16, 16] and pre["interpolation"] == "bilinear" and pre["crop_mode"] == "squash"
    assert pre["crop_pct"] == 1.0 and len(pre["mean"]) == len(pre["std"]) == 3
    card = (packed / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: us3l-deploy" in front and 'license: "apache-2.0"' in front and "- \"us3l\"" in front
    assert "model-index:" in front and "value: 0.81" in front
    # one line per measured network: width, precision, what it was measured on (accuracy.json format 2)
    assert "| 0.25 | fp32 | PyTorch (logits) | 81.00 % |" in card and "| 1.0 | fp32 | PyTorch (logits) | 90.00 % |" in card


def test_no_path_of_the_packing_machine(packed):
    text = (packed / "config.json").read_text()
    assert str(packed.parent) not in text and "/usr/share" not in text and '"/' not in text
    prov = json.loads(text)["us3l"]["provenance"]
    assert prov["source"] == "checkpoint.pt" and prov["train_config"]["out_dir"] == "ft"  # relative to the run
    assert prov["train_config"]["data_root"] is None and json.loads(text)["us3l"]["dataset"]["root"] is None


def test_the_safetensors_library_reads_it_and_edited_labels_load(packed, tmp_path):
    from safetensors.numpy import load_file

    tensors = load_file(str(packed / "model.safetensors"))
    assert tensors["head.weight"].shape == (10, 128) and any(k.startswith("bn_bank.0.25.") for k in tensors)
    d = _copy(packed, tmp_path)
    _edit_config(d, label_names=[f"class {i}" for i in range(10)])
    ckpt = load_checkpoint(d)
    assert ckpt.extra["task"]["classes"][:2] == ["class 0", "class 1"]
    assert torch.equal(ckpt.extra["head"]["weight"], load_checkpoint(packed).extra["head"]["weight"])


@pytest.mark.parametrize("edit, message", [
    (dict(num_classes=11, label_names=[str(i) for i in range(11)]), "says num_classes 11, but the classifier in "
                                                                   "model.safetensors has 10 outputs"),
    (dict(label_names=["a", "b"]), "has 2 label_names for 10 classes"),
    (dict(num_features=64), "says num_features 64, but us_resnet_mini with its model_args gives 128 features"),
    (dict(architecture="us_resnet18_cifar"), "does not match config.json (us_resnet18_cifar)"),
    (dict(model_args={"width_range": [0.25, 1.0], "input_size": 16, "base": 32}), "cannot be built: architecture .us_resnet_mini. takes no argument"),
])
def test_a_config_that_contradicts_the_weights_is_one_line(packed, tmp_path, edit, message):
    d = _copy(packed, tmp_path)
    _edit_config(d, **edit)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        load_checkpoint(d)
    assert "\n" not in str(err.value)


def test_weights_that_differ_are_refused_then_resealed(packed, tmp_path, message_lines):
    from safetensors.torch import load_file, save_file

    d = _copy(packed, tmp_path)
    weights = d / "model.safetensors"
    flipped = bytearray(weights.read_bytes())
    flipped[len(flipped) // 2] ^= 1
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"differs from the weights packed in this directory .*edited, "
                                              r"re-saved or damaged.*--reseal"):
        load_checkpoint(d)
    shutil.copyfile(packed / "model.safetensors", weights)
    save_file(load_file(str(weights)), str(weights))  # re-saved unchanged by the library: other bytes
    proc = subprocess.run([*US3L, "eval", str(d)], capture_output=True, text=True)
    assert proc.returncode == 2 and "re-saved" in proc.stderr and len(message_lines(proc.stderr)) == 1
    proc = subprocess.run([*US3L, "pack", str(d), "--reseal"], capture_output=True, text=True)
    assert proc.returncode == 0 and "tensors match config.json" in proc.stdout, proc.stderr
    again = load_checkpoint(d)
    assert again.content_hash == load_checkpoint(packed).content_hash  # same values: accuracy still joins
    assert "| 0.25 | fp32 | PyTorch (logits) | 81.00 % |" in (d / "README.md").read_text()


def test_reseal_checks_every_tensor_and_a_malformed_file_is_one_line(packed, tmp_path, message_lines):
    from safetensors.torch import load_file, save_file

    d = _copy(packed, tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    tensors["head.weight"] = tensors["head.weight"][:, :64].contiguous()
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"head.weight is F32\[10,64\], config.json implies F32\[10,128\]"):
        reseal(d)
    tensors = load_file(str(packed / "model.safetensors"))
    tensors["head.weight"] = tensors["head.weight"].double()
    save_file(tensors, str(d / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"head.weight is F64\[10,128\]"):
        reseal(d)
    (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    proc = subprocess.run([*US3L, "pack", str(d), "--reseal"], capture_output=True, text=True)
    assert proc.returncode == 2 and "is not a valid safetensors file" in proc.stderr
    assert len(message_lines(proc.stderr)) == 1 and "Traceback" not in proc.stderr


def test_a_backbone_without_classifier(tmp_path):
    from us3l.core.models import get_model

    ckpt = Checkpoint.from_model(get_model("us_resnet_mini"), method="untrained")
    d = pack_checkpoint(ckpt, tmp_path / "m")
    config = json.loads((d / "config.json").read_text())
    assert config["num_classes"] == 0 and "label_names" not in config
    assert "pipeline_tag: image-feature-extraction" in (d / "README.md").read_text()
    _edit_config(d, num_classes=3)
    with pytest.raises(CheckpointError, match="says num_classes 3 but the weights hold no classifier"):
        load_checkpoint(d)
