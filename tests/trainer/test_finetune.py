"""Slimmable fine-tuning (us3l finetune): the frozen-backbone head, the from-scratch single-width
baseline, the accuracy table bench joins, the loss pieces, one-line errors; and the classifier
``us3l eval --method linear`` keeps."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from us3l.cli.main import app
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.models import get_model
from us3l.core.taskmodel import choose_head, classes_of, has_head, static_head
from us3l.trainer.finetune import (FinetuneConfig, _lr_factor, _shift, get_finetune_recipe, run_finetune,
                                   soft_cross_entropy)

TINY = {"epochs": 1, "max_steps_per_epoch": 2, "calib_batches": 1}


@pytest.fixture(scope="module")
def ssl_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ft") / "ssl" / "checkpoint.pt"
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini"), method="us3l",
                                          dataset=DatasetSpec("digits").to_dict()), path)
    return path


def test_frozen_backbone_trains_only_the_shared_head(ssl_ckpt, tmp_path):
    out = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path), freeze_backbone=True,
                                      head="shared", widths="0.25,1.0", **TINY))
    parent, task = load_checkpoint(ssl_ckpt), load_checkpoint(out.checkpoint)
    params = {n for n, _ in get_model("us_resnet_mini").named_parameters()}
    assert all(torch.equal(task.model[k], parent.model[k]) for k in params)  # weights untouched (BN buffers recalibrated)
    assert has_head(task) and task.extra["head"]["weight"].shape == (10, 128) and task.training is None
    assert task.extra["task"]["trained_by"] == "frozen-backbone" and classes_of(task) == [str(i) for i in range(10)]
    assert task.bank_widths() == [0.25, 1.0] and task.extra["parent"]["sha256"] == parent.content_hash
    head = static_head(task, 0.25, 32)  # input-slimmed: the first 32 features at width 0.25
    assert torch.equal(head.weight, task.extra["head"]["weight"][:, :32])
    # the accuracy table: top-1 per width, keyed to the task checkpoint, joinable by bench
    from us3l.benchmarks.choice import accuracy_table

    data = json.loads(out.accuracy_path.read_text())
    assert data["checkpoint"] == task.content_hash and [r["width"] for r in data["results"]] == [0.25, 1.0]
    table = accuracy_table(data["results"], out.accuracy_path)
    assert table[(0.25, "fp32")]["metric"] == "top1" and 0 <= table[(1.0, "fp32")]["accuracy"] <= 1


def test_scratch_baseline_trains_one_width_from_random_weights(ssl_ckpt, tmp_path):
    out = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path), init="scratch",
                                      train_width=0.5, **TINY))
    task = load_checkpoint(out.checkpoint)
    assert task.width_range == (0.5, 0.5) and [r["width"] for r in out.rows] == [0.5]
    assert not torch.equal(task.model["conv1.weight"], load_checkpoint(ssl_ckpt).model["conv1.weight"])


def test_soft_cross_entropy_and_shift():
    z = torch.randn(5, 10, requires_grad=True)
    t = torch.randn(5, 10)
    soft_cross_entropy(z, t).backward()
    # gradient of the soft cross-entropy: softmax(student) - softmax(teacher), averaged
    assert torch.allclose(z.grad, (z.softmax(1) - t.softmax(1)).detach() / 5, atol=1e-6)
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).reshape(2, 3, 16, 16)
    y = _shift(x, 0.125, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(_shift(x, 0.0, torch.Generator()), x)


def test_bad_options_give_one_line(ssl_ckpt):
    res = CliRunner().invoke(app, ["finetune", str(ssl_ckpt), "--epochs", "0"])
    assert res.exit_code == 2 and "epochs 0 is invalid" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["finetune", str(ssl_ckpt), "--augment", "rotate"])
    assert res.exit_code == 2 and "valid" in res.output


def test_eval_linear_keeps_a_usable_classifier(ssl_ckpt, tmp_path):
    from us3l.api import evaluate
    from us3l.core.bn import load_bn_stats
    from us3l.core.context import use_width
    from us3l.core.data import load_split

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ssl_ckpt.read_bytes())
    res = evaluate(ckpt, "0.25", method="linear", calib_batches=1)
    assert res.classifier == tmp_path / "linear-classifier.pt"
    clf = load_checkpoint(res.classifier)
    assert clf.extra["task"]["head"] == "per-width" and set(clf.extra["heads"]) == {"0.25"}
    # the kept head (standardisation folded in) reproduces the probe's accuracy on raw features
    net = clf.build_model().eval()
    load_bn_stats(net, clf.bn_stats_for(0.25), 0.25)
    x, y = load_split(DatasetSpec("digits"), "test")
    with torch.no_grad(), use_width(net, 0.25):
        top1 = float((static_head(clf, 0.25, 32)(net(x)).argmax(1) == y).float().mean())
    assert top1 == pytest.approx(res.accuracy(0.25, "linear"), abs=1 / len(y) + 1e-9)


def test_finetune_on_a_fashion_mnist_slice(ssl_ckpt, tmp_path):
    from us3l.api import finetune
    import numpy as np

    from us3l.core.data import FASHION_MNIST_CLASSES, FASHION_MNIST_FILES, write_idx

    root, rng = tmp_path / "slice", np.random.default_rng(0)  # IDX files in the Fashion-MNIST layout
    for split, n in (("train", 64), ("test", 32)):
        write_idx(root / FASHION_MNIST_FILES[split][0], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / FASHION_MNIST_FILES[split][1], rng.integers(0, 10, n, dtype=np.uint8))
    res = finetune(ssl_ckpt, dataset="fashion-mnist", data_root=str(root), out_dir=str(tmp_path / "ft"),
                   widths="0.25", **TINY)
    task = load_checkpoint(res.checkpoint)
    assert task.train_config["finetune"]["batch_size"] == 128  # the fashion_mnist recipe, picked from --data
    assert classes_of(task) == list(FASHION_MNIST_CLASSES) and task.arch_kwargs["input_size"] == 28
    pre = task.extra["task"]["preprocess"]
    assert pre["color"] == "gray" and pre["size"] == 28 and pre["mean"] == [0.286] * 3
    assert 0 <= res.top1(0.25) <= 1


def test_per_width_heads_are_the_default_one_per_ladder_width(ssl_ckpt, tmp_path):
    """Item 5: one linear layer per width of the exported ladder; the nearer head serves a width in between."""
    out = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path), widths="0.25,0.5,1.0", **TINY))
    task = load_checkpoint(out.checkpoint)
    heads = task.extra["heads"]
    assert "head" not in task.extra and task.extra["task"]["head"] == "per-width"
    assert {k: tuple(v["weight"].shape) for k, v in heads.items()} == {"0.25": (10, 32), "0.5": (10, 64), "1.0": (10, 128)}
    assert not any(k.startswith("fc.") for k in task.model)  # the backbone alone: no shared fc
    assert [(r["width"], r["head"]) for r in out.rows] == [(0.25, "0.25"), (0.5, "0.5"), (1.0, "1.0")]
    table = json.loads(out.accuracy_path.read_text())["results"]  # format 2: each row says how it was measured
    assert [(r["width"], r["head"], r["details"]["head"]) for r in table] == [
        (0.25, "0.25", "per-width"), (0.5, "0.5", "per-width"), (1.0, "1.0", "per-width")]
    assert (table[0]["details"]["label_smoothing"], table[0]["details"]["augment"]) == (0.1, "shift")  # fine-tuning
    # in between: the nearer head (a tie goes to the narrower), reading the first min(D_w, D_head) features
    assert choose_head(task, 0.3) == {"kind": "per-width", "width": "0.25", "rule": "nearest"}
    assert choose_head(task, 0.75)["width"] == "0.5" and choose_head(task, 0.8)["width"] == "1.0"
    assert choose_head(task, 0.5) == {"kind": "per-width", "width": "0.5", "rule": "exact"}
    wide = static_head(task, 0.3, 40)  # width 0.3 has 40 features; the 0.25 head reads the first 32
    assert torch.equal(wide.weight[:, :32], heads["0.25"]["weight"]) and not wide.weight[:, 32:].any()
    narrow = static_head(task, 0.8, 104)  # width 0.8 has 104 features; the 1.0 head's first 104 inputs
    assert torch.equal(narrow.weight, heads["1.0"]["weight"][:, :104]) and torch.equal(narrow.bias, heads["1.0"]["bias"])


def test_folding_the_standardisation_gives_the_same_logits():
    """A head trained on standardised features, folded, gives the same logits on the raw features."""
    from us3l.trainer.finetune import PerWidthHeads
    from us3l.trainer.probes import feature_scaler, fold_standardization

    gen = torch.Generator().manual_seed(0)
    feats = {"0.25": torch.rand(200, 32, generator=gen) * 3 + 1, "1.0": torch.rand(200, 128, generator=gen) * 0.2}
    scalers = {k: feature_scaler(f) for k, f in feats.items()}
    torch.manual_seed(3)
    heads = PerWidthHeads([0.25, 1.0], [32, 128], 10)
    on_standardised = {k: heads((f - scalers[k][0]) / scalers[k][1], float(k)).detach() for k, f in feats.items()}
    lin = heads.head(0.25)
    weight, bias = fold_standardization(lin.weight, lin.bias, *scalers["0.25"])
    assert (feats["0.25"] @ weight.T + bias - on_standardised["0.25"]).abs().max() <= 1e-5
    heads.fold(scalers)
    for k, f in feats.items():
        assert (heads(f, float(k)) - on_standardised[k]).abs().max() <= 1e-5
    assert not torch.allclose(heads(feats["1.0"], 1.0), PerWidthHeads([0.25, 1.0], [32, 128], 10)(feats["1.0"], 1.0))


def test_frozen_per_width_heads_are_probes_on_eval_mode_features(ssl_ckpt, tmp_path, monkeypatch):
    from us3l.trainer.finetune import PerWidthHeads, calib_features

    seen: list[tuple[float, torch.Tensor]] = []  # what the heads read in training (a spy; the real forward runs)
    scalers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    forward, fold = PerWidthHeads.forward, PerWidthHeads.fold
    monkeypatch.setattr(PerWidthHeads, "forward", lambda self, f, w: seen.append((w, f.detach())) or forward(self, f, w))
    monkeypatch.setattr(PerWidthHeads, "fold", lambda self, s: scalers.update(s) or fold(self, s))
    out = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path), freeze_backbone=True,
                                      widths="0.25,1.0", **TINY))
    parent, task = load_checkpoint(ssl_ckpt), load_checkpoint(out.checkpoint)
    # the heads trained on standardised features, the statistics of each width's eval-mode features on the
    # calibration images (the training split, un-augmented): the checkpoint's backbone and BN bank give them again
    from us3l.core.bn import load_bn_stats
    from us3l.trainer.finetune import TaskData, _resolve

    cfg = FinetuneConfig(checkpoint=str(ssl_ckpt), **TINY)
    data = TaskData(_resolve(cfg, parent), cfg)
    model = task.build_model()
    for w in (0.25, 1.0):
        load_bn_stats(model, task.bn_stats_for(w), w)
        f = calib_features(model, data.calib, w, 1)
        mean, std = scalers[str(w)]
        assert torch.allclose(mean, f.mean(0, keepdim=True), atol=1e-5) and torch.allclose(std, f.std(0, keepdim=True),
                                                                                              atol=1e-5)
        train = torch.cat([x for v, x in seen[:2 * 2] if v == w])  # the training steps' inputs at width w
        raw_spread = float(std.mean())
        assert abs(float(train.mean(0).mean())) < 0.5 and 0.5 < float(train.std(0).mean()) < 2 and \
            not 0.5 < raw_spread < 2  # standardised, unlike the raw features
    details = json.loads(out.accuracy_path.read_text())["results"][0]["details"]
    assert details["augment"] == "none" and details["trained_by"] == "frozen-backbone"  # the probe's view
    assert details["label_smoothing"] == 0.0  # and its plain cross-entropy
    # an explicit choice is kept
    kept = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path / "ls"), freeze_backbone=True,
                                       widths="0.25", label_smoothing=0.2, augment="shift", **TINY))
    details = json.loads(kept.accuracy_path.read_text())["results"][0]["details"]
    assert (details["augment"], details["label_smoothing"]) == ("shift", 0.2)
    params = {n for n, _ in get_model("us_resnet_mini").named_parameters()}
    assert all(torch.equal(task.model[k], parent.model[k]) for k in params)  # the backbone is untouched
    assert set(task.extra["heads"]) == {"0.25", "1.0"} and task.extra["task"]["trained_by"] == "frozen-backbone"
    # every head trained every step on the labels at its own width: both moved from their initialisation
    from us3l.trainer.finetune import PerWidthHeads

    torch.manual_seed(1)  # the heads' initialisation: seed + 1
    start = PerWidthHeads([0.25, 1.0], [32, 128], 10).state()
    assert all(not torch.equal(task.extra["heads"][k]["weight"], start[k]["weight"]) for k in start)
    assert all(0 <= r["top1"] <= 1 for r in out.rows)


def test_paper_preset_is_the_references_per_width_fine_tuning(ssl_ckpt, tmp_path):
    """configs/cifar/resnet18_finetune_cifar.yaml: one width, 50 epochs, batch 64, SGD 0.01 (momentum 0.9,
    wd 1e-4), x0.1 at epochs 30 and 40, RandomResizedCrop (0.08, 1) + flip, plain cross-entropy."""
    paper = get_finetune_recipe("paper")
    assert {k: paper[k] for k in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing",
                                  "schedule", "milestones", "augment", "crop_scale_min")} == {
        "epochs": 50, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "label_smoothing": 0.0,
        "schedule": "step", "milestones": (30, 40), "augment": "crop", "crop_scale_min": 0.08}
    cfg = FinetuneConfig(checkpoint=str(ssl_ckpt), **paper)
    assert [_lr_factor(cfg, e * 10, 500, 10) for e in (0, 29, 30, 39, 40, 49)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    res = CliRunner().invoke(app, ["finetune", str(ssl_ckpt), "--recipe", "paper"])
    assert res.exit_code == 2 and "one width at a time" in res.output and "--train-width" in res.output
    res = CliRunner().invoke(app, ["finetune", str(ssl_ckpt), "--recipe", "paper", "--train-width", "0.5", "--epochs",
                                   "1", "--max-steps-per-epoch", "2", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    task = load_checkpoint(tmp_path / "checkpoint.pt")
    assert task.width_range == (0.5, 0.5) and set(task.extra["heads"]) == {"0.5"}
    assert task.train_config["finetune"]["schedule"] == "step" and not task.train_config["finetune"]["nesterov"]
