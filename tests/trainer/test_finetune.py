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
from us3l.core.taskmodel import classes_of, has_head, static_head
from us3l.trainer.finetune import FinetuneConfig, _shift, run_finetune, soft_cross_entropy

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
                                      widths="0.25,1.0", **TINY))
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
