"""The per-width INT8 recipe (us3l.exporters.int8_recipe): order of recipes, the sensitive layer
groups found in a graph, the choice on held-out images, and what the sidecar records."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from us3l.exporters import ExportConfig, run_export
from us3l.exporters.int8_recipe import (SENSITIVE, Recipe, RecipeRequest, candidate_recipes, choose_recipe,
                                        sensitive_nodes)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_recipes_keep_speed_first_then_keep_sensitive_layers_one_group_at_a_time():
    got = candidate_recipes("minmax", ("minmax", "percentile"))
    assert got[:2] == [Recipe("minmax"), Recipe("percentile")]
    assert [r.keep_fp32 for r in got[2:]] == [("head",), ("head",), ("head", "stem"), ("head", "stem"),
                                              SENSITIVE, SENSITIVE]


@pytest.fixture(scope="module")
def logits(tmp_path_factory):
    """An untrained us_resnet_mini with a 10-class head, FP32 ONNX, and its static network."""
    root = tmp_path_factory.mktemp("recipe")
    torch.manual_seed(0)
    head = root / "head.pt"
    torch.save({"weight": torch.randn(10, 128) * 0.1, "bias": torch.zeros(10)}, head)
    res = run_export(ExportConfig(arch="us_resnet_mini", widths="1.0", out_dir=str(root / "fp32"), include_head=str(head)))
    return root, head, res.artifacts[0]


def test_sensitive_groups_are_the_stem_the_last_block_and_the_head(logits):
    from us3l.core.models import get_model
    from us3l.core.slicing import slice_to_width

    _, _, art = logits
    model = onnx.load(str(art.path))
    nodes = {n.name: n for n in model.graph.node}
    groups = sensitive_nodes(model)
    assert nodes[groups["stem"][0]].input[0] == "input" and nodes[groups["stem"][0]].op_type == "Conv"
    assert groups["head"] and all(nodes[n].op_type in ("Gemm", "MatMul") for n in groups["head"])
    # us_resnet_mini's last block (layer3.0) has conv1, conv2 and the downsample conv
    assert len(groups["last_block"]) == 3 and all(nodes[n].op_type == "Conv" for n in groups["last_block"])
    torch.manual_seed(0)
    static = slice_to_width(get_model("us_resnet_mini").eval(), 1.0)
    assert sensitive_nodes(model, static)["last_block"]  # by weights when the network is given


def test_the_first_recipe_that_holds_is_chosen_and_every_trial_is_recorded(logits, tmp_path):
    from us3l.exporters.onnx_exporter import batched_runner, ort_session
    from us3l.exporters.onnx_quant import quantize_int8

    _, _, art = logits
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 3, 16, 16)).astype(np.float32)
    held = rng.standard_normal((24, 3, 16, 16)).astype(np.float32)
    ref = ort_session(art.path, threads=1).run(None, {"input": held})[0]

    def run(path):
        sess = ort_session(path, threads=1)
        return batched_runner(lambda x: sess.run(None, {"input": x})[0], None)

    def quantize(src, images, out, rng_path, method, **kw):
        return quantize_int8(src, images, out, rng_path, method, "input", None, **kw)

    groups = sensitive_nodes(onnx.load(str(art.path)))
    impossible = RecipeRequest(held, ref, classifier=True, min_agreement=1.01, calibrations=("minmax", "percentile"))
    facts = choose_recipe(art.path, calib, tmp_path / "a.onnx", tmp_path / "a.ranges.json", "minmax", impossible,
                          quantize, run, groups)
    tried = facts["recipe"]["tried"]
    assert len(tried) == 8 and not facts["recipe"]["passed"] and (tmp_path / "a.onnx").is_file()
    assert [t["keep_fp32"] for t in tried[-2:]] == [list(SENSITIVE)] * 2
    best = max(tried, key=lambda t: (t["top1_agreement"], t["mean_cosine"]))
    assert facts["recipe"]["chosen"] == best  # none held: the closest to FP32 is kept (the gate decides)
    kept = facts["recipe"]["kept_fp32"]
    q = onnx.load(str(tmp_path / "a.onnx"))
    qnodes = {n.name: n for n in q.graph.node}
    float_inits = {i.name for i in q.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for name in kept:  # a kept layer reads float weights straight from an initializer: not quantized
        assert qnodes[name].input[1] in float_inits
    easy = RecipeRequest(held, ref, classifier=True, min_agreement=0.5, calibrations=("minmax", "percentile"))
    facts = choose_recipe(art.path, calib, tmp_path / "b.onnx", tmp_path / "b.ranges.json", "minmax", easy,
                          quantize, run, groups)
    assert len(facts["recipe"]["tried"]) == 1 and facts["recipe"]["chosen"]["keep_fp32"] == []
    assert facts["method"] == "minmax" and (tmp_path / "b.ranges.json").is_file()
    assert facts["recipe"]["per_channel_activations"].startswith("not supported")


def test_the_pipeline_records_the_recipe_per_width_and_fixed_mode_does_not(logits, tmp_path):
    _, head, _ = logits
    common = {"arch": "us_resnet_mini", "widths": "0.25,1.0", "precision": "int8", "include_head": str(head),
              "gate_images": 16, "int8_images": 32}
    auto = run_export(ExportConfig(out_dir=str(tmp_path / "auto"), int8_min_agreement=0.5, **common))
    for a in auto.artifacts:
        side = json.loads(a.sidecar.read_text())
        recipe = side["calibration"]["recipe"]
        assert recipe["mode"] == "auto" and recipe["criterion"] == {"top1_agreement": 0.5}
        assert recipe["tried"] and recipe["held_out_images"] == side["parity"]["num_images"]  # the gate's images
    fixed = run_export(ExportConfig(out_dir=str(tmp_path / "fixed"), int8_recipe="fixed", **common))
    assert all("recipe" not in json.loads(a.sidecar.read_text())["calibration"] for a in fixed.artifacts)
