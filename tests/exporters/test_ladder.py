"""Ladders by substitution (us3l.exporters.ladder): one translated width, every other width derived.

- A substituted and a translated (traced) export of the same width have equal operator lists and
  outputs within the FP32 parity gate (dynamo, the default exporter, through the pipeline).
- Every architecture of the registry passes the parity matrix of tests/exporters/test_onnx.py
  (widths {min, 0.35, 0.5, 1.0}, ONNX Runtime at batch 1 and 7 against the slimmable model)
  through substitution from one template (the legacy exporter translates it: the mapping is by
  value, so it does not depend on the exporter's names), or falls back with a named reason.
- Fallbacks: a template that cannot express a width, and a substituted file failing its gate,
  are translated in full and the sidecar says why.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from us3l.core.bn import calibrate_bn
from us3l.core.context import use_width
from us3l.core.models import get_model, list_models
from us3l.core.slicing import slice_to_width
from us3l.exporters import ExportConfig, ExportRequest, get_exporter, run_export
from us3l.exporters.ladder import Ladder, choose_template, ops_of, slimmable_counts
from us3l.exporters.parity import DEFAULT_TOLERANCE

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

SIZES = {"us_resnet18": 64, "us_resnet50": 64, "us_mobilenet_v2": 64}
VIT = {"input_size": 32, "depth": 2}


def _model(arch: str) -> tuple[torch.nn.Module, int]:
    size = SIZES.get(arch, 32 if ("cifar" in arch or "vit" in arch) else 16)
    torch.manual_seed(0)
    kwargs = dict(VIT) if "vit" in arch else {"input_size": size}
    return get_model(arch, **kwargs).eval(), size


def _widths(net: torch.nn.Module) -> list[float]:
    return sorted({net.width_range[0], 0.35, 0.5, 1.0})


def _gate(out: np.ndarray, ref: np.ndarray) -> bool:
    atol, rtol = DEFAULT_TOLERANCE["fp32"]
    return bool(np.abs(out - ref).max() <= atol + rtol * float(np.abs(ref).max()))


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_passes_the_parity_matrix_through_substitution(arch, tmp_path):
    net, size = _model(arch)
    widths = _widths(net)
    template = choose_template(widths, lambda w: slimmable_counts(net, w, 8))
    ladder, exporter = Ladder(), get_exporter("onnx")
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, size, size, generator=gen)
    for w in [template] + [w for w in widths if w != template]:
        calibrate_bn(net, [torch.randn(16, 3, size, size, generator=gen)], w)
        net.eval()
        with torch.no_grad(), use_width(net, w):
            ref = net(x).numpy()
        req = ExportRequest(static=slice_to_width(net, w), path=tmp_path / f"w{w}.onnx", input_shape=(3, size, size),
                            metadata={"us3l.width": str(w)}, options={"exporter": "torchscript", "ladder": ladder})
        facts = exporter.export(req)
        method = facts["export"]["method"]
        assert method == ("traced" if w == template else "substituted"), facts["export"]
        onnx.checker.check_model(str(req.path), full_check=True)
        run = exporter.runner(req.path, req)
        for batch in (1, 7):
            out = run(x[:batch].numpy())
            assert out.shape == ref[:batch].shape
            assert _gate(out, ref[:batch]), (arch, w, float(np.abs(out - ref[:batch]).max()))
    assert ladder.substituted == len(widths) - 1 and not ladder.fallbacks


def test_substituted_and_traced_exports_of_a_width_have_equal_ops_and_outputs(tmp_path):
    """The default exporter (dynamo), through the pipeline: width 0.5 of a two-width ladder is
    substituted from the template; the same width exported alone is translated."""
    ladder = run_export(ExportConfig(arch="us_resnet_mini", widths="0.5,1.0", out_dir=str(tmp_path / "l"),
                                     onnx_exporter="dynamo"))
    alone = run_export(ExportConfig(arch="us_resnet_mini", widths="0.5", out_dir=str(tmp_path / "t"),
                                    onnx_exporter="dynamo"))
    sub, traced = ladder.for_width(0.5), alone.for_width(0.5)
    side_sub, side_traced = (json.loads(a.sidecar.read_text()) for a in (sub, traced))
    assert side_sub["export"]["method"] == "substituted" and side_sub["export"]["template_width"] == 1.0
    assert side_traced["export"]["method"] == "traced"
    assert json.loads(ladder.for_width(1.0).sidecar.read_text())["export"]["method"] == "traced"
    m_sub, m_traced = onnx.load(str(sub.path)), onnx.load(str(traced.path))
    assert [n.op_type for n in m_sub.graph.node] == [n.op_type for n in m_traced.graph.node]
    assert ops_of(m_sub) == side_sub["format_info"]["graph"]["ops"] == side_traced["format_info"]["graph"]["ops"]
    assert sorted(tuple(i.dims) for i in m_sub.graph.initializer) == sorted(tuple(i.dims) for i in m_traced.graph.initializer)
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    from us3l.exporters.onnx_exporter import ort_session

    outs = [ort_session(p, threads=1).run(None, {"input": x})[0] for p in (sub.path, traced.path)]
    assert _gate(outs[0], outs[1])
    assert side_sub["parity"]["passed"] and side_sub["parity"]["max_abs_err"] < 1e-4


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_the_vit_at_full_width_keeps_the_traced_operator_list(tmp_path, exporter):
    """A ViT template is sliced (its linears read x[..., :fin]); at width 1.0 those slices keep the
    whole axis: torch's dynamo translation of width 1.0 leaves them out (and so does substitution
    for it), the legacy translation keeps them (and so does substitution for it)."""
    torch.manual_seed(0)
    net = get_model("us_vit_tiny", input_size=32, depth=1).eval()
    ex, ladder = get_exporter("onnx"), Ladder()
    paths = {}
    for name, w, lad in (("template", 0.5, ladder), ("substituted", 1.0, ladder), ("traced", 1.0, None)):
        req = ExportRequest(static=slice_to_width(net, w), path=tmp_path / f"{name}.onnx", input_shape=(3, 32, 32),
                            metadata={"us3l.width": str(w)}, options={"exporter": exporter, "ladder": lad})
        assert ex.export(req)["export"]["method"] == ("substituted" if name == "substituted" else "traced")
        paths[name] = req.path
    models = {k: onnx.load(str(p)) for k, p in paths.items()}
    assert "Slice" in ops_of(models["template"])
    assert ops_of(models["substituted"]) == ops_of(models["traced"])


def test_a_width_the_template_cannot_express_is_translated_with_a_named_reason(tmp_path):
    """A ViT translated at width 1.0 has no input slices, so width 0.5 cannot be derived from it."""
    net, size = _model("us_vit_tiny")
    exporter, ladder = get_exporter("onnx"), Ladder()
    facts = {}
    for w in (1.0, 0.5):
        calibrate_bn(net, [torch.randn(4, 3, size, size)], w)
        req = ExportRequest(static=slice_to_width(net.eval(), w), path=tmp_path / f"{w}.onnx", input_shape=(3, size, size),
                            metadata={"us3l.width": str(w)}, options={"exporter": "torchscript", "ladder": ladder})
        facts[w] = exporter.export(req)["export"]
    assert facts[1.0]["method"] == "traced"
    assert facts[0.5]["method"] == "traced" and facts[0.5]["fallback"]
    assert ladder.fallbacks and ladder.fallbacks[0][0] == 0.5


def test_the_template_avoids_ambiguous_counts():
    """At width 1.0 the ViT's sliced input count (192) equals its fixed embedding size; 0.5 is clean."""
    net, _ = _model("us_vit_tiny")
    assert choose_template([0.25, 0.5, 0.75, 1.0], lambda w: slimmable_counts(net, w, 8)) == 0.5
    res, _ = _model("us_resnet_mini")
    assert choose_template([0.25, 0.5, 1.0], lambda w: slimmable_counts(res, w, 8)) == 1.0


def test_a_substituted_file_failing_its_gate_is_translated_and_says_why(tmp_path, monkeypatch):
    import us3l.exporters.ladder as ladder_mod

    real = ladder_mod.network_tensors
    calls = {"n": 0}

    def corrupt(module):
        out = real(module)
        calls["n"] += 1
        if calls["n"] > 1:  # the template maps correctly; later widths get a wrong tensor
            key = next(k for k in out if k.endswith(":fold_b"))
            out[key] = out[key] + 1.0
        return out

    monkeypatch.setattr(ladder_mod, "network_tensors", corrupt)
    res = run_export(ExportConfig(arch="us_resnet_mini", widths="0.5,1.0", out_dir=str(tmp_path / "f"),
                                  onnx_exporter="torchscript"))
    side = json.loads(res.for_width(0.5).sidecar.read_text())
    assert side["export"]["method"] == "traced"
    assert side["export"]["fallback"].startswith("parity gate after substitution")
    assert side["parity"]["passed"]


def test_substitution_can_be_turned_off_and_single_widths_are_traced(tmp_path):
    res = run_export(ExportConfig(arch="us_resnet_mini", widths="0.5,1.0", out_dir=str(tmp_path / "o"),
                                  substitute=False, onnx_exporter="torchscript"))
    assert {json.loads(a.sidecar.read_text())["export"]["method"] for a in res.artifacts} == {"traced"}
