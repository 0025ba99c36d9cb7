"""``--eval-every``: kNN learning curves in metrics.jsonl and TensorBoard, without changing the run they measure."""

from __future__ import annotations

import json

import torch

from us3l.core.checkpoint import load_checkpoint
from us3l.trainer.config import TrainConfig
from us3l.trainer.loop import run_training
from us3l.trainer.monitor import KnnMonitor


def _run(out, eval_every):
    cfg = TrainConfig(epochs=2, batch_size=16, image_size=8, max_steps_per_epoch=2, out_dir=str(out),
                      eval_every=eval_every, eval_images=50, eval_bank=200, tensorboard=False)
    return load_checkpoint(run_training(cfg))


def test_learning_curve_is_recorded_and_leaves_training_unchanged(tmp_path):
    with_curve, without = _run(tmp_path / "a", 1), _run(tmp_path / "b", 0)
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [sorted(r["knn"]) for r in records] == [["0.25", "1.0"]] * 2  # smallest and largest width, every epoch
    assert all(0 <= a <= 1 for r in records for a in r["knn"].values()) and all(r["knn_s"] > 0 for r in records)
    assert all("knn" not in json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines())
    # the monitor works on a copy and restores the RNG streams: the weights are those of the run without it
    for k, v in with_curve.model.items():
        assert torch.equal(v, without.model[k]), k


def test_monitor_uses_fixed_held_out_queries_and_a_seeded_bank():
    from us3l.core.data import DatasetSpec
    from us3l.core.models import get_model

    spec = DatasetSpec("digits", image_size=8)
    mon = KnnMonitor(spec, [1.0, 0.25, 1.0], n_queries=100, n_bank=300)
    assert mon.widths == [0.25, 1.0] and mon.describe()["queries"] == 100 and mon.describe()["bank"] == 300
    assert torch.equal(mon.queries.indices, torch.arange(100))  # the first held-out images
    assert torch.equal(KnnMonitor(spec, [1.0], 100, 300).bank.indices, mon.bank.indices)
    torch.manual_seed(0)
    net = get_model("us_resnet_mini", input_size=8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = mon(net)
    assert set(got) == {"0.25", "1"} or set(got) == {"0.25", "1.0"}
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # measured on a copy


def test_learning_curve_goes_to_tensorboard(tmp_path):
    """The writer sends each width's kNN as ``knn/w<width>`` (tensorboard itself is an optional extra)."""
    from us3l.trainer.loop import _MetricsWriter

    class Recorder:
        def __init__(self):
            self.scalars = []

        def add_scalar(self, tag, value, step):
            self.scalars.append((tag, value, step))

    writer = _MetricsWriter(tmp_path, 0, tensorboard=False)
    writer.tb = Recorder()
    writer.write({"epoch": 3, "loss_base": 1.0, "knn": {"0.25": 0.5, "1.0": 0.7}})
    assert ("knn/w0.25", 0.5, 3) in writer.tb.scalars and ("knn/w1.0", 0.7, 3) in writer.tb.scalars
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["knn"] == {"0.25": 0.5, "1.0": 0.7}
