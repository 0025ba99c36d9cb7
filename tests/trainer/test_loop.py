"""The training loop end to end on digits: exact resume, the CLI, kill -9 and --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from us3l.trainer.config import TrainConfig
from us3l.trainer.loop import Trainer, run_training
from us3l.core.checkpoint import load_checkpoint
from us3l.cli.main import app
from us3l.core.errors import ConfigError

TINY = dict(image_size=8, batch_size=16, proj_hidden_dim=32, proj_out_dim=16, pred_hidden_dim=32,
            max_steps_per_epoch=2, log_interval=1, collapse_batch=32, tensorboard=False, schedule="A", epochs=4)


def all_state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    out = {f"backbone.{k}": v for k, v in ckpt.model.items()}
    out.update({f"heads.{k}": v for k, v in ckpt.training["heads"].items()})
    for i, s in ckpt.training["optimizer"]["state"].items():
        out[f"opt.{i}"] = s["momentum_buffer"]
    return out


def test_resume_continues_exactly(tmp_path):
    # 4 epochs with schedule A cover all sampling stages (1.0 only -> 0.75 -> 0.5 -> 0.25).
    cfg = TrainConfig(out_dir=str(tmp_path / "straight"), **TINY)
    straight = run_training(cfg)
    split_cfg = cfg.replace(out_dir=str(tmp_path / "split"))
    Trainer(split_cfg).fit(until_epoch=2)
    assert load_checkpoint(tmp_path / "split" / "checkpoint.pt").epoch == 2
    resumed = run_training(split_cfg.replace(resume=True))
    a, b = all_state(straight), all_state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    ckpt = load_checkpoint(resumed)
    assert ckpt.epoch == 4 and ckpt.training["global_step"] == 8
    records = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert [r["widths_per_iter"] for r in records] == [1.0, 3.0, 3.0, 3.0]


def test_metrics_lost_between_checkpoint_and_log_come_back_on_resume(tmp_path):
    # a kill right after the checkpoint of epoch 2 is written and before its metrics line is
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 3})
    Trainer(cfg).fit(until_epoch=2)
    metrics = tmp_path / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert [r["epoch"] for r in load_checkpoint(tmp_path / "checkpoint.pt").training["metrics"]] == [2]
    metrics.write_text(lines[0] + "\n")
    run_training(cfg.replace(resume=True))
    records = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[1] == json.loads(lines[1])  # the very record, from the checkpoint


def test_resume_refuses_changed_options(tmp_path):
    cfg = TrainConfig(out_dir=str(tmp_path), **{**TINY, "epochs": 1, "max_steps_per_epoch": 1})
    run_training(cfg)
    with pytest.raises(ConfigError, match="lr: 0.1 -> 0.3"):
        Trainer(cfg.replace(resume=True, lr=0.3))


def test_cli_train_writes_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--epochs", "2", "--out", str(out), "--max-steps-per-epoch", "2",
                                      "--batch-size", "32", "--channels-last"])
    assert result.exit_code == 0, result.output
    assert f"checkpoint: {out / 'checkpoint.pt'}" in result.output.replace("\n", "")
    ckpt = load_checkpoint(out / "checkpoint.pt")  # torch.load(weights_only=True) inside
    assert ckpt.epoch == 2 and ckpt.method == "us3l" and ckpt.arch == "us_resnet_mini"
    assert ckpt.dataset == {"name": "digits", "root": None, "image_size": None}
    assert ckpt.train_config["epochs"] == 2 and ckpt.training["rng"][0]["torch"].dtype == torch.uint8
    assert ckpt.train_config["channels_last"] is True
    model = ckpt.build_model()
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 128)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "collapse" in json.loads(lines[-1])


def test_cli_user_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(app, ["train", "--recipe", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "unknown recipe 'nope'" in result.output


def test_kill_mid_training_then_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "us3l.cli.main", "train", "--epochs", "3", "--out", str(out),
            "--batch-size", "32", "--max-steps-per-epoch", "6"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_path = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt_path.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: epoch 1 is saved, epoch 2 is running
    proc.wait()
    assert load_checkpoint(ckpt_path).epoch < 3
    done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.epoch == 3 and ckpt.training["global_step"] == 18
    epochs = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


@pytest.mark.parametrize("flags,method", [(["--method", "naive"], "naive"),
                                          (["--method", "naive-contrastive"], "naive-contrastive"),
                                          (["--method", "single", "--single-width", "0.5"], "single")])
def test_cli_baselines(tmp_path, flags, method):
    out = tmp_path / method
    result = CliRunner().invoke(app, ["train", "--epochs", "1", "--out", str(out), "--max-steps-per-epoch", "1",
                                      "--batch-size", "16", "--image-size", "8", *flags])
    assert result.exit_code == 0, result.output
    ckpt = load_checkpoint(out / "checkpoint.pt")
    teacherless = method.startswith("naive")
    assert ckpt.method == method and (ckpt.training["heads"].get("teacher.backbone.conv1.weight") is None) == teacherless
    # the reference's naive keeps its predictor (the sub-widths' head); naive-contrastive has none
    assert any(k.startswith("aux_predictor.") for k in ckpt.training["heads"]) == (method == "naive")
    # resolved defaults are recorded: digits are grey; the reference's naive config has no GroupReg
    assert ckpt.train_config["augmentation"] == "gray" and ckpt.train_config["group_reg"] == (method != "naive")
    record = json.loads((out / "metrics.jsonl").read_text())
    assert [c["width"] for c in record["collapse"]] == ([0.5] if method == "single" else [0.25, 0.5, 0.75, 1.0])


def test_fail_on_collapse_stops_after_saving(tmp_path):
    from us3l.trainer.collapse import CollapseError

    # a threshold no healthy representation meets makes every width count as collapsed
    cfg = TrainConfig(out_dir=str(tmp_path), fail_on_collapse=True, collapse_std_ratio=0.999,
                      **{**TINY, "epochs": 3, "max_steps_per_epoch": 1})
    with pytest.raises(CollapseError, match="collapsed at width\\(s\\) 0.25, 0.5, 0.75, 1.0 after epoch 1"):
        run_training(cfg)
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 1


def test_resume_needs_the_checkpoint_on_every_rank(tmp_path):
    from us3l.trainer.loop import resume_visibility

    path = tmp_path / "checkpoint.pt"
    assert resume_visibility([True, True], path) is True
    assert resume_visibility([False, False], path) is False  # nothing to resume: start from scratch
    with pytest.raises(ConfigError, match=r"rank\(s\) 1, 3 cannot see .*every node shares"):
        resume_visibility([True, False, True, False], path)


def test_epoch_steps_keep_or_drop_the_last_batch():
    from us3l.trainer.loop import epoch_steps

    assert epoch_steps(1437, 512, drop_last=True) == 2
    assert epoch_steps(1437, 512, drop_last=False) == 3  # 413 images left: trained
    assert epoch_steps(1025, 512, drop_last=False) == 2  # a single image left: BN/negatives need two


def test_drop_last_false_trains_the_last_smaller_batch(tmp_path):
    """Item 2: with ``drop_last=False`` (the SimCLR-CIFAR configs) the remainder batch is trained.

    Old behaviour caught: the last batch of every epoch was always dropped.
    """
    base = {**TINY, "epochs": 1, "max_steps_per_epoch": None, "batch_size": 512, "schedule": ""}
    kept = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), drop_last=False, **base))
    dropped = Trainer(TrainConfig(out_dir=str(tmp_path / "b"), drop_last=True, **base))
    assert (kept.steps_per_epoch, dropped.steps_per_epoch) == (3, 2)  # 1437 digits = 2 x 512 + 413
    sizes = []
    original = kept.parts.model.forward
    kept.parts.model.forward = lambda x1, *a, **k: sizes.append(len(x1)) or original(x1, *a, **k)
    kept.fit()
    assert sizes == [512] * 3 + [512] * 3 + [413] * 3  # three widths per iteration


def test_lr_ramps_every_iteration_when_asked(tmp_path, monkeypatch):
    """Item 3: MoCo v3's warm-up (and cosine) move at fractional epochs, every iteration.

    Old behaviour caught: the rate changed once per epoch (the whole first epoch at lr / W).
    """
    import us3l.trainer.loop as loop
    from us3l.trainer.runtime import lr_at_iteration

    seen = []
    original = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda parts, *a, **k: seen.append(parts.optimizer.param_groups[0]["lr"])
                        or original(parts, *a, **k))
    cfg = TrainConfig(out_dir=str(tmp_path), lr_per_iteration=True, lr_warmup_epochs=2,
                      **{**TINY, "epochs": 3, "max_steps_per_epoch": 2})
    Trainer(cfg).fit()
    expected = [lr_at_iteration(e + s / 2, 3, cfg.lr, 2) for e in range(3) for s in range(2)]
    assert seen == pytest.approx(expected)
    assert seen[:4] == pytest.approx([0.0, 0.025, 0.05, 0.075])  # lr 0.1, W = 2: linear in iterations
    assert lr_at_iteration(2.5, 3, 0.1, 2) == pytest.approx(0.05)  # cosine half-way after warm-up


def test_channels_last_trains_to_the_same_weights(tmp_path):
    """Item 7: ``channels_last`` changes the memory format only (same update up to float rounding)."""
    # color views as when this tolerance was set: the gray views' noise and erasing give inputs whose
    # one-step rounding difference between the two memory formats reaches ~1e-4 relative
    base = {**TINY, "epochs": 1, "max_steps_per_epoch": 1, "schedule": "", "augmentation": "color"}
    a = Trainer(TrainConfig(out_dir=str(tmp_path / "a"), channels_last=True, **base))
    assert a.raw_model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    a.fit()
    b = Trainer(TrainConfig(out_dir=str(tmp_path / "b"), **base))
    b.fit()
    for (n, p), q in zip(a.raw_model.named_parameters(), b.raw_model.parameters()):
        assert torch.allclose(p, q, atol=1e-5), n
