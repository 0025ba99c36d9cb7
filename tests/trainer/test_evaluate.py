"""Per-width evaluation (docs/method.md §10, §11): BN recalibration per width, kNN, linear probe, accuracy.json, `us3l eval`."""

from __future__ import annotations

import json

import pytest
import torch

from us3l.trainer.evaluate import (LinearProbeConfig, evaluate_checkpoint, knn_accuracy, linear_probe_accuracy,
                              read_accuracy, write_accuracy)
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.errors import DataError, US3LError, WidthError
from us3l.core.models import get_model

SMALL = DatasetSpec(image_size=8)  # digits at 8 px keeps these tests fast (us_resnet_mini pools adaptively)


@pytest.fixture(scope="module")
def ckpt() -> Checkpoint:
    torch.manual_seed(0)
    return Checkpoint.from_model(get_model("us_resnet_mini"), dataset=DatasetSpec().to_dict())


def test_knn_weighted_vote_by_hand():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0], [1.0, 0.8]])
    assert knn_accuracy(train, labels, test, torch.tensor([0, 1, 1]), k=1) == 1.0
    # k=3 for [1, 0.8]: neighbours 0.7/0.7 (label 1, sim .994), 0.9/0.1 (0, .82), 1/0 (0, .78);
    # weights exp(sim/0.07): one class-1 vote beats two class-0 votes
    assert knn_accuracy(train, labels, test[2:], torch.tensor([1]), k=3) == 1.0
    assert knn_accuracy(train, labels, test[2:], torch.tensor([0]), k=3, temperature=100.0) == 1.0


def test_linear_probe_separable():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 5
    y = torch.arange(60) % 3
    x = centers[y] + 0.1 * torch.randn(60, 8, generator=g)
    cfg = LinearProbeConfig(epochs=20, milestones=(15,))
    assert linear_probe_accuracy(x[:45], y[:45], x[45:], y[45:], 3, cfg) == 1.0
    assert linear_probe_accuracy(x[:45], y[:45], x[45:], y[45:], 3, cfg) == 1.0  # seeded, repeatable


def test_evaluate_rows_and_bn_bank(ckpt):
    calls = []
    rows = evaluate_checkpoint(ckpt, [1.0, 0.25], "both", dataset=SMALL, store_bn=True, calib_batches=3,
                               linear=LinearProbeConfig(epochs=5, milestones=(4,)),
                               progress=lambda w, stage: calls.append((w, stage)))
    assert [r["width"] for r in rows] == [1.0, 0.25]
    assert [r["feature_dim"] for r in rows] == [128, 32]
    for r in rows:
        assert set(r) == {"width", "precision", "feature_dim", "knn", "linear", "source", "calib_images", "knn_k",
                          "outputs", "sha256", "bn"}
        assert (r["precision"], r["source"], r["outputs"], r["bn"]) == ("fp32", "pytorch", "features", "recalibrated")
        assert r["sha256"] == ckpt.content_hash  # the checkpoint state measured
        assert 0.3 < r["knn"] <= 1.0 and 0.0 <= r["linear"] <= 1.0  # random init is still far above chance
    assert ("0.25", "done") == (str(calls[-1][0]), calls[-1][1])
    assert ckpt.bank_widths() == [0.25, 1.0]
    s25, s100 = ckpt.bn_stats_for(0.25), ckpt.bn_stats_for(1.0)
    assert s25["bn1"]["mean"].numel() == 8 and s100["bn1"]["mean"].numel() == 32
    assert not torch.allclose(s25["layer3.0.bn2"]["var"], s100["layer3.0.bn2"]["var"][:32])  # per-width calibration


def test_evaluate_validation(ckpt):
    with pytest.raises(WidthError):
        evaluate_checkpoint(ckpt, [0.1])
    with pytest.raises(US3LError):
        evaluate_checkpoint(ckpt, [1.0], method="svm")
    with pytest.raises(US3LError):
        evaluate_checkpoint(ckpt, [1.0], linear="imagenet-lars")
    no_data = Checkpoint.from_model(get_model("us_resnet_mini"))
    with pytest.raises(DataError, match="--data"):
        evaluate_checkpoint(no_data, [1.0])


def test_vit_without_bn_evaluates():
    torch.manual_seed(0)
    net = get_model("us_vit_tiny", input_size=16, patch_size=4, depth=1)
    rows = evaluate_checkpoint(Checkpoint.from_model(net, dataset=DatasetSpec().to_dict()), [0.25, 1.0])
    assert [r["feature_dim"] for r in rows] == [192, 192] and all(0 <= r["knn"] <= 1 for r in rows)


def test_accuracy_file_roundtrip(tmp_path):
    rows = [{"width": 0.25, "knn": 0.5}, {"width": 1.0, "knn": 0.75}]
    path = write_accuracy(tmp_path / "accuracy.json", rows, {"method": "knn"}, "abc")
    data = json.loads(path.read_text())
    assert data == {"checkpoint": "abc", "protocol": {"method": "knn"}, "results": rows}
    assert read_accuracy(path) == rows
    (tmp_path / "bare.json").write_text(json.dumps(rows))
    assert read_accuracy(tmp_path / "bare.json") == rows
    (tmp_path / "bad.json").write_text('{"results": [{"knn": 1}]}')
    with pytest.raises(DataError):
        read_accuracy(tmp_path / "bad.json")
    with pytest.raises(DataError):
        read_accuracy(tmp_path / "missing.json")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_cli_eval_end_to_end(tmp_path, ckpt):
    from typer.testing import CliRunner

    from us3l.cli.main import app

    path = tmp_path / "ck.pt"
    save_checkpoint(Checkpoint.from_model(ckpt.build_model(), dataset=DatasetSpec().to_dict()), path)
    runner = CliRunner()
    res = runner.invoke(app, ["eval", str(path), "--widths", "0.25,1.0", "--json", "--calib-batches", "2", "--image-size", "8"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["width"] for r in rows] == [0.25, 1.0] and all(0 <= r["knn"] <= 1 for r in rows)
    table = read_accuracy(tmp_path / "accuracy.json")  # one row per protocol, recording what it measured
    assert [(r["width"], r["knn"]) for r in table] == [(r["width"], r["knn"]) for r in rows]
    assert all(r["protocol"] == "knn" and r["outputs"] == "features" and r["sha256"] == load_checkpoint(path).content_hash
               and r["details"]["dataset"]["name"] == "digits" and r["measured_at"] for r in table)
    res = runner.invoke(app, ["eval", str(path), "--widths", "0.5", "--store-bn", "--calib-batches", "2", "--image-size", "8"])
    assert res.exit_code == 0, res.output
    assert "knn" in res.stdout and load_checkpoint(path).bank_widths() == [0.5]
    assert [r["width"] for r in read_accuracy(tmp_path / "accuracy.json")] == [0.25, 0.5, 1.0]  # merged: tables only grow
    res = runner.invoke(app, ["eval", str(path), "--widths", "0.1"])
    assert res.exit_code == 2 and "outside" in res.stderr
    res = runner.invoke(app, ["eval", str(path), "--data", "cifar10", "--data-root", str(tmp_path / "none")])
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_run_eval_default_widths_follow_checkpoint_range(tmp_path):
    from us3l.trainer.evaluate import EvalConfig, run_eval

    torch.manual_seed(0)
    path = tmp_path / "narrow.pt"
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini", width_range=(0.4, 1.0)),
                                          dataset=DatasetSpec().to_dict()), path)
    result = run_eval(EvalConfig(str(path), image_size=8, calib_batches=1))
    assert [r["width"] for r in result.rows] == [0.4, 0.5, 0.75, 1.0]
    assert result.accuracy_path == tmp_path / "accuracy.json" and result.checkpoint_hash == load_checkpoint(path).content_hash
