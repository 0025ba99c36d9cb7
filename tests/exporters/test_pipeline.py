"""The export pipeline on the small ``us_resnet_mini``: ladders and aliases, snapping, caching,
the parity gate, BN statistics sources, heads and all-or-nothing writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from us3l.exporters import ExportConfig, run_export
from us3l.exporters.onnx_exporter import OnnxExporter
from us3l.core.bn import bn_stats, calibrate_bn
from us3l.core.checkpoint import Checkpoint, save_checkpoint
from us3l.core.errors import ConfigError, ExportError, ParityError, WidthError
from us3l.core.models import get_model
from us3l.core.slicing import channel_config

ARCH = "us_resnet_mini"
LADDER = "0.25:0.5:0.05"


def _groups(widths, divisor=8):
    with torch.device("meta"):
        net = get_model(ARCH)
    groups: list[list[float]] = []
    for w in widths:
        cfg = channel_config(net, w, divisor)
        for g in groups:
            if channel_config(net, g[0], divisor) == cfg:
                g.append(w)
                break
        else:
            groups.append([w])
    return groups


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    out = tmp_path_factory.mktemp("ladder") / "out"
    return out, run_export(ExportConfig(arch=ARCH, widths=LADDER, out_dir=str(out)))


def test_ladder_aliases_follow_channel_configs(ladder):
    out, res = ladder
    widths = [0.25, 0.3, 0.35, 0.4, 0.45, 0.5]
    expected = _groups(widths)
    assert any(len(g) > 1 for g in expected), "the ladder must contain at least one alias plateau"
    assert [[a.width, *a.aliases] for a in res.artifacts] == expected
    assert len(list(out.glob("*.onnx"))) == len(expected) == len(list(out.glob("*.json")))
    for group in expected:
        assert all(res.for_width(w).width == group[0] for w in group)
    side = json.loads(res.artifacts[0].sidecar.read_text())
    for key in ("width", "aliases", "channels", "macs", "params", "input", "precision", "parity", "versions", "build",
                "untrained", "checkpoint", "opset"):
        assert key in side, key
    assert side["untrained"] is True and side["parity"]["max_abs_err"] <= 1e-4 and side["parity"]["passed"]
    assert side["input"]["shape"] == ["batch", 3, 16, 16] and side["versions"]["onnxruntime"]
    macs = [a.macs for a in res.artifacts]
    assert macs == sorted(macs) and len(set(macs)) == len(macs)


def test_second_identical_run_reuses_everything(ladder):
    out, first = ladder
    mtimes = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    again = run_export(ExportConfig(arch=ARCH, widths=LADDER, out_dir=str(out)))
    assert again.num_cached == len(again.artifacts) == len(first.artifacts)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    assert [a.sha256 for a in again.artifacts] == [a.sha256 for a in first.artifacts]


def test_changed_file_is_rebuilt_and_foreign_key_needs_force(tmp_path):
    out = tmp_path / "o"
    res = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out)))
    art = res.artifacts[0]
    art.path.write_bytes(art.path.read_bytes() + b"\0")  # tampered: hash no longer matches
    with pytest.raises(ExportError, match="--force"):
        run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out)))
    redo = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out), force=True))
    assert redo.num_cached == 0 and redo.artifacts[0].sha256 == art.sha256
    with pytest.raises(ExportError, match="built from something else"):
        run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out), seed=1))
    art.path.unlink()  # a stale sidecar without its file is simply rebuilt
    assert run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(out), seed=1)).artifacts[0].path.is_file()


def test_snap_rounds_every_layer_to_the_divisor_and_stays_exact(tmp_path):
    res = run_export(ExportConfig(arch=ARCH, widths="0.3,0.4,0.7", out_dir=str(tmp_path / "s"), snap=16))
    with torch.device("meta"):
        net = get_model(ARCH)
    for a in res.artifacts:
        assert a.path.name.endswith("_s16.onnx")
        assert a.channels == channel_config(net, a.width, 16)
        assert all(c % 16 == 0 for c in a.channels.values())
        assert a.parity["max_abs_err"] <= 1e-4
    assert [[a.width, *a.aliases] for a in res.artifacts] == _groups([0.3, 0.4, 0.7], 16)


def test_parity_gate_refuses_and_leaves_nothing(tmp_path):
    fresh = tmp_path / "fresh"
    with pytest.raises(ParityError, match="minimum required tolerance"):
        run_export(ExportConfig(arch=ARCH, widths="0.25,0.5", out_dir=str(fresh), atol=1e-12, rtol=0.0))
    assert not fresh.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    with pytest.raises(ParityError):
        run_export(ExportConfig(arch=ARCH, widths="0.25,0.5", out_dir=str(existing), atol=1e-12, rtol=0.0))
    assert [p.name for p in existing.iterdir()] == ["keep.txt"]


def test_parity_gate_catches_a_wrong_artifact(tmp_path, monkeypatch):
    original = OnnxExporter.runner

    def perturbed(self, path, req):
        run = original(self, path, req)
        return lambda x: run(x) + 1e-2

    monkeypatch.setattr(OnnxExporter, "runner", perturbed)
    with pytest.raises(ParityError, match=r"atol=0\.01"):
        run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(tmp_path / "p")))
    assert not (tmp_path / "p").exists()


def _checkpoint(tmp_path, bank_widths, dataset=None):
    torch.manual_seed(0)
    net = get_model(ARCH).eval()
    ckpt = Checkpoint.from_model(net, method="us3l", dataset=dataset)
    for w in bank_widths:
        calibrate_bn(net, [torch.randn(16, 3, 16, 16)], w)
        ckpt.add_bn_stats(w, bn_stats(net, w))
    path = tmp_path / "mini.pt"
    save_checkpoint(ckpt, path)
    return path


def test_bank_statistics_else_recalibration_else_refusal(tmp_path):
    ckpt = _checkpoint(tmp_path, [0.35, 0.5])
    res = run_export(ExportConfig(checkpoint=str(ckpt), widths="0.5", out_dir=str(tmp_path / "a")))
    side = json.loads(res.artifacts[0].sidecar.read_text())
    assert side["bn"]["source"] == "bank" and side["untrained"] is False
    assert _groups([0.35, 0.4]) == [[0.35, 0.4]]  # 0.4 slices to the same network as 0.35 ...
    alias = run_export(ExportConfig(checkpoint=str(ckpt), widths="0.4", out_dir=str(tmp_path / "a2")))
    assert json.loads(alias.artifacts[0].sidecar.read_text())["bn"]["bank_width"] == "0.35"  # ... so its stats serve
    assert side["checkpoint"]["method"] == "us3l" and res.artifacts[0].path.name == "mini_w0.5.onnx"
    # the sidecar travels with the file to devices: the checkpoint is named from the export folder
    assert side["checkpoint"]["path"] == "../mini.pt" and str(tmp_path) not in res.artifacts[0].sidecar.read_text()
    with pytest.raises(ExportError, match="--calib-data"):
        run_export(ExportConfig(checkpoint=str(ckpt), widths="0.5,0.75", out_dir=str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()
    images = tmp_path / "calib.npy"
    np.save(images, np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32))
    res = run_export(ExportConfig(checkpoint=str(ckpt), widths="0.75", out_dir=str(tmp_path / "c"), calib_data=str(images)))
    side = json.loads(res.artifacts[0].sidecar.read_text())
    assert side["bn"]["source"] == "recalibrated" and side["parity"]["inputs"] == "real"
    assert str(tmp_path) not in res.artifacts[0].sidecar.read_text()


def test_recalibrates_on_the_checkpoint_training_data(tmp_path):
    ckpt = _checkpoint(tmp_path, [], dataset={"name": "digits", "root": None, "image_size": 16})
    res = run_export(ExportConfig(checkpoint=str(ckpt), widths="0.35", out_dir=str(tmp_path / "d"), bn_images=64))
    side = json.loads(res.artifacts[0].sidecar.read_text())
    assert side["bn"] == {"source": "recalibrated", "data": {"dataset": {"name": "digits", "root": None, "image_size": 16}},
                          "images": 64}
    assert side["input"]["normalization"]["mean"] and side["parity"]["passed"]


def test_head_batch_and_exported_program(tmp_path):
    feat = get_model(ARCH).feature_dim(0.5)
    head = tmp_path / "probe.pt"
    torch.save({"weight": torch.randn(10, feat), "bias": torch.randn(10)}, head)
    res = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(tmp_path / "h"), include_head=str(head), batch=3))
    a = res.artifacts[0]
    side = json.loads(a.sidecar.read_text())
    assert a.feature_dim == 10 and side["output"]["name"] == "logits" and a.input_shape == (3, 3, 16, 16)
    assert "_b3" in a.path.name and a.parity["max_abs_err"] <= 1e-4
    pt2 = run_export(ExportConfig(arch=ARCH, widths="0.5", out_dir=str(tmp_path / "h"), format="pt2"))
    assert pt2.artifacts[0].path.suffix == ".pt2" and pt2.artifacts[0].parity["max_abs_err"] <= 1e-5
    program = torch.export.load(str(pt2.artifacts[0].path))  # a real ExportedProgram with a dynamic batch
    with torch.no_grad():
        assert program.module()(torch.zeros(5, 3, 16, 16)).shape == (5, pt2.artifacts[0].feature_dim)
    engine = ExportConfig(arch=ARCH, format="engine")  # the TensorRT users' name for the format
    assert engine.format == "trt"


@pytest.mark.parametrize("kwargs,error", [
    ({"widths": "1.5"}, WidthError), ({"precision": "int4"}, ConfigError), ({"snap": 12}, ConfigError),
    ({"batch": 0}, ConfigError), ({"opset": 9}, ConfigError),
    ({"precision": "fp16", "format": "pt2"}, ConfigError), ({"calibration": "kl"}, ConfigError),
    ({"min_cosine": 2.0}, ConfigError),
])
def test_bad_config_raises_before_writing(tmp_path, kwargs, error):
    out = tmp_path / "never"
    with pytest.raises(error):
        run_export(ExportConfig(arch=ARCH, out_dir=str(out), **kwargs))
    assert not out.exists()


def test_unwritable_directory_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError, match="cannot write"):
        run_export(ExportConfig(arch=ARCH, out_dir=str(blocker / "x")))
    with pytest.raises(ExportError, match="not a directory"):
        run_export(ExportConfig(arch=ARCH, out_dir=str(blocker)))
    assert blocker.read_text() == "not a directory" and [p.name for p in tmp_path.iterdir()] == ["a_file"]


def test_opset_is_selectable_and_batch_can_be_fixed(tmp_path):
    import onnx

    res = run_export(ExportConfig(arch=ARCH, widths="0.25", out_dir=str(tmp_path), opset=13, batch=4, onnx_exporter="dynamo"))
    model = onnx.load(str(res.artifacts[0].path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, 16, 16] and not dims[0].dim_param
    assert json.loads(res.artifacts[0].sidecar.read_text())["cache_key"]["opset"] == 13


def test_calibration_records_name_no_absolute_data_root(tmp_path):
    """The sidecar's BN/INT8 data record travels with the artifact: a data root is named by its folder
    and a short hash of the path (so two roots of one name stay apart in the cache key), never by its
    absolute path."""
    from us3l.exporters.source import CalibrationSet

    def record(calib_data=None, dataset=None):
        return CalibrationSet(calib_data, dataset, input_size=8, in_chans=3, untrained=False).describe()

    a, b = tmp_path / "x" / "flowers", tmp_path / "y" / "flowers"
    from_ckpt = record(dataset={"name": "imagefolder", "root": str(a), "image_size": 8})
    named = record(calib_data=f"fashion-mnist:{b}")
    assert str(tmp_path) not in json.dumps([from_ckpt, named])
    assert from_ckpt["dataset"]["root"].startswith("flowers#") and named["dataset"].startswith("fashion-mnist:flowers#")
    assert from_ckpt["dataset"]["root"] != record(dataset={"name": "imagefolder", "root": str(b)})["dataset"]["root"]
    assert record(calib_data="digits") == {"dataset": "digits"}
    assert record(dataset={"name": "imagefolder", "root": "data/flowers"})["dataset"]["root"] == "data/flowers"
