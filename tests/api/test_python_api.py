"""The Python API (``us3l.load/train/evaluate/widths/export/bench``) on tiny real runs:
typed results agree with the files the rooms write, SlimmableModel's calibrate/slice/features/export
agree with each other numerically, and bad input raises one-line user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import us3l
from us3l.core.errors import CheckpointError, ConfigError, DataError, US3LError, WidthError
from us3l.core.slicing import is_static


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> us3l.TrainResult:
    out = tmp_path_factory.mktemp("api") / "run"
    return us3l.train(epochs=1, max_steps_per_epoch=2, out_dir=str(out), seed=3)


def test_import_is_lazy_and_surface_is_complete():
    code = ("import sys, us3l as u; names = ['load', 'train', 'evaluate', 'widths', 'export', 'bench', "
            "'SlimmableModel', 'TrainResult', 'EvalResult', 'BenchResult', 'WidthInfo', 'LatencyRow', 'Choice', "
            "'TrainConfig', 'ExportResult', 'Artifact']; import us3l.api as a; "
            "assert set(names) <= set(u.__all__) and set(names) <= set(a.__all__); "
            "u.EvalResult; u.BenchResult; print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr
    assert (Path(us3l.__file__).parent / "py.typed").is_file()


def test_train_result_matches_metrics_file(run):
    records = [json.loads(x) for x in run.metrics.read_text().splitlines() if x.strip()]
    assert run.checkpoint.is_file() and run.epochs == 1 == records[-1]["epoch"]
    assert run.loss == pytest.approx(records[-1]["loss_base"]) and len(run.history) == 1
    assert [c.width for c in run.collapse] == [0.25, 0.5, 0.75, 1.0] and not run.collapsed


def test_train_rejects_config_and_recipe_together():
    with pytest.raises(ConfigError, match="not both"):
        us3l.train(us3l.TrainConfig(), recipe="digits")
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        us3l.train(epochs=0)


def test_evaluate_result_matches_accuracy_file(run):
    res = us3l.evaluate(run.checkpoint, "0.25,1.0", calib_batches=2)
    assert [r.width for r in res.results] == [0.25, 1.0] and res.metrics == ["knn"]
    data = json.loads(res.accuracy_file.read_text())
    assert res.accuracy_file == run.checkpoint.with_name("accuracy.json")
    assert data["checkpoint"] == res.checkpoint_hash and res.dataset == "digits"
    on_file = [r for r in data["results"] if r["width"] in (0.25, 1.0) and r["protocol"] == "knn"]
    assert [(r["width"], r["knn"], r["sha256"], r["outputs"]) for r in res.to_rows()] == \
        [(r["width"], r["knn"], r["sha256"], r["outputs"]) for r in on_file]
    assert 0.0 < res.accuracy(0.25) <= 1.0 and res.accuracy(1.0, "knn") == res.results[1].knn
    with pytest.raises(ConfigError, match="no linear accuracy"):
        res.accuracy(0.25, "linear")
    with pytest.raises(ConfigError, match="untrained"):
        us3l.evaluate("us_resnet_mini")
    with pytest.raises(ConfigError, match="untrained"):
        us3l.evaluate(us3l.SlimmableModel.from_arch("us_resnet_mini"))
    in_memory = us3l.SlimmableModel(us3l.load(run.checkpoint).network, us3l.load(run.checkpoint).checkpoint)
    with pytest.raises(ConfigError, match=r"save\(path\) first"):
        us3l.evaluate(in_memory)


def test_slimmable_model_slice_equals_features_and_core(run):
    model = us3l.load(run.checkpoint)
    assert model.arch == "us_resnet_mini" and not model.untrained and model.calibrated_widths() == []
    with pytest.raises(ConfigError, match=r"calibrate\(0.5\)"):
        model.slice(0.5)
    x = torch.randn(5, 3, 16, 16)
    plain = model.calibrate(0.5, batches=3, batch_size=64).slice(0.5)
    assert all(is_static(m) for m in plain.modules()) and not plain.training
    ref = model.features(x, 0.5)
    assert torch.allclose(plain(x), ref, atol=1e-5) and ref.shape == (5, model.widths([0.5])[0].feature_dim)
    assert model.calibrated_widths() == [0.5]
    # the same statistics from the core path: use_width + calibrate_bn on the same batches
    from us3l import calibrate_bn, use_width
    from us3l.core.data import DatasetSpec, load_split

    imgs, _ = load_split(DatasetSpec("digits"), "train")
    imgs = imgs[torch.randperm(len(imgs), generator=torch.Generator().manual_seed(0))]
    net = us3l.load(run.checkpoint).network
    calibrate_bn(net, imgs.split(64), 0.5, num_batches=3)
    with torch.no_grad(), use_width(net.eval(), 0.5):
        assert torch.allclose(net(x), ref, atol=1e-5)


def test_calibrate_accepts_tensors_loaders_and_names(run, tmp_path):
    model = us3l.load(run.checkpoint)
    imgs = torch.randn(40, 3, 16, 16)
    model.calibrate(0.25, imgs, batch_size=16)
    by_tensor = model.slice(0.25)
    loader = [(imgs[i:i + 16], torch.zeros(16)) for i in range(0, 40, 16)]
    model.calibrate(0.25, loader)
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(by_tensor(x), model.slice(0.25)(x), atol=1e-5)
    model.calibrate(0.75, "digits", batches=1)
    model.calibrate(0.4, torch.randn(8, 3, 32, 32))  # other sizes are resized to the network's input
    with pytest.raises(DataError, match="N x 3 x H x W"):
        model.calibrate(0.5, torch.randn(4, 1, 16, 16))
    with pytest.raises(WidthError):
        model.calibrate(1.5)
    # unsaved calibrations: evaluate/bench refuse, save() writes the bank, load() reads it back
    with pytest.raises(ConfigError, match="save"):
        model.bench()
    saved = model.save(tmp_path / "calibrated.pt")
    again = us3l.load(saved)
    assert again.calibrated_widths() == [0.25, 0.4, 0.75]
    assert torch.allclose(again.slice(0.25)(x), model.slice(0.25)(x), atol=1e-6)


def test_bank_alias_and_snapped_widths(run):
    model = us3l.load(run.checkpoint).calibrate(0.35, batches=2)
    aliases = {w.width: w.alias_of for w in model.widths("0.35,0.4")}
    assert aliases == {0.35: None, 0.4: 0.35}
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.slice(0.4)(x), model.slice(0.35)(x))  # the alias uses 0.35's statistics
    with pytest.raises(ConfigError, match="no BN statistics"):
        model.slice(0.35, snap=16)  # snapped networks have their own statistics
    snapped = model.calibrate(0.35, batches=2, snap=16).slice(0.35, snap=16)
    assert torch.allclose(snapped(x), model.features(x, 0.35, snap=16), atol=1e-5)


def test_untrained_model_and_widths_function():
    model = us3l.SlimmableModel.from_arch("us_resnet18_cifar")
    assert model.untrained and "untrained" in repr(model)
    info = us3l.widths("us_resnet18_cifar", "0.35")[0]
    assert info.stages == [24, 24, 48, 88, 176] and info == model.widths([0.35])[0]
    plain = model.slice(0.35)  # random-input statistics on demand for latency planning
    assert plain(torch.randn(1, 3, 32, 32)).shape == (1, 176)
    with pytest.raises(ConfigError, match="no checkpoint"):
        model.save("x.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        us3l.widths("no_such_file_or_arch.pt")
    with pytest.raises(ConfigError, match="a checkpoint path, an architecture name or a SlimmableModel"):
        us3l.widths(42)  # type: ignore[arg-type]
    with pytest.raises(US3LError, match="unknown architecture"):
        us3l.SlimmableModel.from_arch("resnet9000")


def test_export_uses_in_memory_bank_and_matches_slice(run, tmp_path):
    import onnxruntime as ort

    model = us3l.load(run.checkpoint).calibrate(0.5, batches=2)
    res = model.export([0.5, 0.4], out=tmp_path / "onnx")
    art = res.for_width(0.5)
    side = json.loads(art.sidecar.read_text())
    assert side["bn"]["source"] == "bank" and art.parity["max_abs_err"] <= 1e-4 and art.path.name == "checkpoint_w0.5.onnx"
    x = torch.randn(3, 3, 16, 16)
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - model.slice(0.5)(x).detach().numpy()).max() <= 1e-4
    planned = us3l.export("us_resnet_mini", "0.25", out=tmp_path / "plan")
    assert planned.artifacts[0].untrained
    with pytest.raises(ConfigError, match="contradicts"):
        us3l.export(run.checkpoint, 0.5, arch="us_resnet18_cifar", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_bench_result_is_typed_and_matches_report(run, tmp_path):
    us3l.evaluate(run.checkpoint, "0.25,1.0", calib_batches=2)
    res = us3l.bench(run.checkpoint, widths="0.25,0.5,1.0", budget_ms=1000, iterations=3, rounds=1, warmup_ms=1,
                     out=tmp_path / "bench", runner="torch")  # the torch runner times the PyTorch widths eval measured
    report = json.loads(res.files["report"].read_text())
    assert [r.width for r in res.results] == [r["width"] for r in report["results"]] == [0.25, 0.5, 1.0]
    assert res.chosen is not None and res.chosen.width == report["chosen"]["width"]
    acc = {r.width: r.accuracy for r in res.results}
    assert acc[0.5] is None and res.chosen.accuracy == max(a for a in acc.values() if a is not None)
    assert res.latency(0.5) == res.results[1].p95_ms and res.files["plot"].is_file()
    with pytest.raises(ConfigError, match="was not measured"):
        res.latency(0.75)
    with pytest.raises(ConfigError, match="metric"):
        res.results[0].latency("p42")
    tight = us3l.bench(arch="us_resnet_mini", widths=[0.25], budget_ms=1e-6, iterations=2, rounds=1, warmup_ms=1,
                       out=tmp_path / "tight", plot=False)
    assert tight.chosen is None and "fastest is width 0.25" in (tight.reason or "")


def test_progress_callback_and_rich_bar(tmp_path, capsys):
    calls = []
    us3l.export("us_resnet_mini", "0.25,0.5", out=tmp_path / "a", progress=lambda d, t, m: calls.append((d, t, m)))
    assert calls[0][:2] == (0, 2) and calls[-1] == (2, 2, "done")
    us3l.export("us_resnet_mini", "0.25", out=tmp_path / "b", progress=True)  # a rich bar on stderr
    assert "exporting onnx" in capsys.readouterr().err
    us3l.export("us_resnet_mini", "0.25", out=tmp_path / "c", progress=False)
    assert capsys.readouterr().err == ""


def test_cached_bench_through_the_api_does_not_import_torch(tmp_path):
    code = ("import sys, us3l as u; r = u.bench(arch='us_resnet_mini', widths='0.25', iterations=3, rounds=1, "
            "warmup_ms=1, out='b', plot=False); print('torch' in sys.modules, r.results[0].cached)")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert first.stdout.split() == ["True", "False"], first.stdout + first.stderr
    assert second.stdout.split() == ["False", "True"], second.stdout + second.stderr
