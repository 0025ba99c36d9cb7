"""Shared fixtures: tiny ONNX artifacts exported in the fixture itself (slice_to_width +
torch.onnx.export, dynamo=False), independent of the exporters package."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from us3l.benchmarks.artifacts import BenchArtifact


def export_width(arch: str, width: float, path: Path) -> dict:
    """Export ``arch`` at ``width`` to ``path`` (dynamic batch) and return an exporter-like record."""
    import torch

    from us3l.core.models import get_model
    from us3l.core.slicing import slice_to_width

    torch.manual_seed(0)
    net = get_model(arch).eval()
    static = slice_to_width(net, width)
    x = net.example_input(1)
    import warnings

    with warnings.catch_warnings():  # the legacy exporter is chosen here for speed; its deprecation is known
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        torch.onnx.export(static, x, str(path), input_names=["input"], output_names=["features"],
                          dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}}, dynamo=False,
                          opset_version=17)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    macs = sum(c for c in static.channels.values())  # a stand-in number; real MACs come from the exporter
    return {"width": width, "path": str(path), "sha256": sha, "input_shape": list(x.shape),
            "channels": static.channels, "macs": macs, "params": sum(p.numel() for p in static.parameters()),
            "aliases": [], "precision": "fp32"}


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> list[BenchArtifact]:
    """us_resnet18_cifar at widths 0.25 and 1.0 as ONNX files (the latency ordering has a ~15x margin)."""
    out = tmp_path_factory.mktemp("onnx")
    arts = []
    for w in (0.25, 1.0):
        rec = export_width("us_resnet18_cifar", w, out / f"w{w}.onnx")
        arts.append(BenchArtifact(width=w, path=Path(rec["path"]), sha256=rec["sha256"],
                                  input_shape=tuple(rec["input_shape"]), channels=rec["channels"], macs=rec["macs"],
                                  params=rec["params"]))
    return arts


@pytest.fixture()
def fixture_exporter(monkeypatch, tmp_path):
    """Replace the exporter call inside ``prepare_artifacts`` by the fixture export (counts calls)."""
    import us3l.benchmarks.artifacts as mod

    calls: list[list[float]] = []

    def fake_export(source, widths, out_dir, precision, progress=None):
        calls.append(list(widths))
        out_dir.mkdir(parents=True, exist_ok=True)
        recs = []
        for w in widths:
            arch = source.arch
            if arch is None:
                from us3l.core.checkpoint import load_checkpoint

                arch = load_checkpoint(source.checkpoint).arch
            rec = export_width(arch, w, out_dir / f"{arch}_w{w}.onnx")
            rec["stamp"] = mod._file_stamp(Path(rec["path"]))
            rec["precision"] = precision  # a stand-in: the fp32 file labelled with the requested precision
            recs.append(rec)
        return recs

    monkeypatch.setattr(mod, "_export", fake_export)
    return calls
