"""Reference US3L checkpoints: key layouts, import, calibrated widths, export parity.

The reference-format checkpoint is built in the test from the documented key layout
(``module.encoder_q.`` + backbone keys + projector ``fc.*``, ``module.encoder_k.*`` and
``module.predictor*``), as the reference implementation's ``torch.save`` writes it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from us3l.exporters import ExportConfig, ImportConfig, run_export, import_reference
from us3l.exporters.onnx_exporter import ort_session
from us3l.exporters.reference import SUPPORTED, expected_shapes
from us3l.core.bn import bn_stats, calibrate_bn
from us3l.core.checkpoint import load_checkpoint
from us3l.core.context import use_width
from us3l.core.errors import CheckpointError
from us3l.core.models import get_model

KEYS_DIR = Path(__file__).resolve().parents[3] / "shared" / "docs" / "reference-keys"
ARCH = "us_resnet18_cifar"


@pytest.mark.parametrize("arch", SUPPORTED)
def test_our_keys_match_the_reference_layout(arch):
    path = KEYS_DIR / f"{arch}.keys.txt"
    if not path.is_file():
        pytest.skip(f"{path} not available (../shared beside the clone)")
    ref = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        ref[key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    backbone = {k: v for k, v in ref.items() if not k.startswith("fc.")}
    assert backbone == expected_shapes(arch)


@functools.lru_cache(maxsize=4)
def _backbone(calibrated_width: float | None) -> torch.nn.Module:
    torch.manual_seed(0)
    net = get_model(ARCH).eval()
    if calibrated_width is not None:
        calibrate_bn(net, [torch.randn(32, 3, 32, 32)], calibrated_width)
        net.eval()
    return net


def reference_file(tmp_path: Path, calibrated_width: float | None, extra: dict | None = None, drop: str | None = None):
    """A reference-format SSL checkpoint and the backbone it holds (BN calibrated at ``calibrated_width``)."""
    net = _backbone(calibrated_width)
    state = {}
    for k, v in net.state_dict().items():
        state[f"module.encoder_q.{k}"] = v
        state[f"module.encoder_k.{k}"] = v.clone() + (0.5 if v.is_floating_point() else 0)
    state["module.encoder_q.fc.weight"] = torch.randn(2048, 512)
    state["module.encoder_q.fc.bias"] = torch.randn(2048)
    state["module.encoder_k.fc.weight"] = torch.randn(2048, 512)
    state["module.predictor.0.weight"] = torch.randn(512, 2048)
    state["module.predictor_new.0.weight"] = torch.randn(512, 2048)
    if calibrated_width is None:  # SSL training does not track BN statistics
        state = {k: v for k, v in state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    state.update(extra or {})
    if drop:
        del state[drop]
    path = tmp_path / "checkpoint_width.pth.tar"
    torch.save({"epoch": 7, "arch": "us_cifar_resnet18", "state_dict": state, "optimizer": {}}, path)
    return path, net


def test_import_calibrated_width_and_export_reproduces_the_reference(tmp_path):
    src, net = reference_file(tmp_path, 0.5)
    ckpt = import_reference(ImportConfig(str(src), str(tmp_path / "ours.pt"), calibrated_width=0.5))
    loaded = load_checkpoint(tmp_path / "ours.pt")
    assert loaded.arch == ARCH and loaded.method == "reference" and loaded.epoch == 7 and loaded.bank_widths() == [0.5]
    expected = bn_stats(net, 0.5)  # the first c(0.5) entries of each running buffer
    for name, stats in loaded.bn_stats_for(0.5).items():
        assert torch.equal(stats["mean"], expected[name]["mean"]) and torch.equal(stats["var"], expected[name]["var"])
    assert loaded.extra["reference"]["dropped"] == {"encoder_q.fc": 2, "encoder_k": len(net.state_dict()) + 1,
                                                    "predictor": 2}
    assert ckpt.content_hash == loaded.content_hash
    res = run_export(ExportConfig(checkpoint=str(tmp_path / "ours.pt"), widths="0.5", out_dir=str(tmp_path / "out")))
    art = res.artifacts[0]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad(), use_width(net, 0.5):
        ref = net(x).numpy()  # the reference network's features at 0.5, with its calibrated statistics
    out = ort_session(art.path).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert out.shape == (5, get_model(ARCH).feature_dim(0.5))


def test_uncalibrated_import_has_empty_bank_and_calibrated_width_is_refused(tmp_path):
    src, _ = reference_file(tmp_path, None)
    ckpt = import_reference(ImportConfig(str(src), str(tmp_path / "a.pt")))
    assert ckpt.bank_widths() == [] and ckpt.extra["reference"]["has_bn_statistics"] is False
    with pytest.raises(CheckpointError, match="no BN running statistics"):
        import_reference(ImportConfig(str(src), str(tmp_path / "b.pt"), calibrated_width=0.5))
    assert not (tmp_path / "b.pt").exists()


@pytest.mark.parametrize("case,match", [
    ("unmappable", r"cannot be mapped: module\.queue"),
    ("missing", r"missing layer1\.0\.conv1\.weight"),
    ("wrong_arch", r"does not fit us_resnet50_cifar"),
    ("corrupt", r"reference checkpoint .* is truncated or corrupt"),
    ("no_state_dict", r"no 'state_dict'"),
])
def test_clear_failures(tmp_path, case, match):
    if case == "corrupt":
        src = tmp_path / "bad.pth.tar"
        src.write_bytes(b"PK\x03\x04 truncated")
    elif case == "no_state_dict":
        src = tmp_path / "raw.pth.tar"
        torch.save({"model": {}}, src)
    else:
        src, _ = reference_file(tmp_path, None, extra={"module.queue": torch.zeros(3)} if case == "unmappable" else None,
                                drop="module.encoder_q.layer1.0.conv1.weight" if case == "missing" else None)
    arch = "us_resnet50_cifar" if case == "wrong_arch" else None
    with pytest.raises(CheckpointError, match=match):
        import_reference(ImportConfig(str(src), str(tmp_path / "o.pt"), arch=arch))
    assert not (tmp_path / "o.pt").exists()


def test_mobilenet_variants_need_the_arch_field_or_flag(tmp_path):
    from us3l.exporters.reference import detect_arch

    with torch.device("meta"):
        state = get_model("us_mobilenet_v2_cifar").state_dict()
    with pytest.raises(CheckpointError, match="pass --arch"):
        detect_arch(state)
    assert detect_arch(state, "us_cifar_mobilenetv2") == "us_mobilenet_v2_cifar"
    assert detect_arch(state, "us_mobilenetv2") == "us_mobilenet_v2"
    with torch.device("meta"):
        assert detect_arch(get_model("us_resnet50").state_dict()) == "us_resnet50"


def test_import_command(tmp_path):
    from us3l.cli.main import app

    src, _ = reference_file(tmp_path, 0.35)
    runner = CliRunner()
    ok = runner.invoke(app, ["import", str(src), "--arch", ARCH, "--calibrated-width", "0.35", "--out", str(tmp_path / "c.pt")])
    assert ok.exit_code == 0, ok.output
    assert load_checkpoint(tmp_path / "c.pt").bank_widths() == [0.35]
    bad = runner.invoke(app, ["import", str(tmp_path / "missing.pth.tar"), "--out", str(tmp_path / "d.pt")])
    assert bad.exit_code == 2 and "does not exist" in bad.output and not (tmp_path / "d.pt").exists()
