"""Switchable files (``us3l export --switchable``): every width in one ONNX file, chosen at run time.

- The file: an int64 ``width_index`` input, outputs with the per-width names and ranks, conv
  weights stored once (top level, widest width) and sliced in the branches, BN statistics per
  branch; each index matches the per-width file; an index it does not hold fails.
- :func:`fix_width` gives back the per-width graph (its operators), which TensorRT builds from;
  ``us3l export FILE --widths W`` writes it, ``--format trt`` needs TensorRT (one line here).
- ``us3l predict --width`` on real images (held-out digits as PNG files) gives the per-width files'
  top-1 at two widths; a width the file does not hold is one line listing those it holds.
- ``us3l eval --artifact FILE --widths`` and ``us3l bench FILE`` measure it per width; the trtexec
  runner (a STAND-IN script: trtexec cannot run here) builds from each width fixed out of the file.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from us3l.cli.main import app
from us3l.core.checkpoint import Checkpoint, save_checkpoint
from us3l.core.data import DIGITS_FILE, DatasetSpec
from us3l.core.errors import ConfigError
from us3l.core.models import get_model
from us3l.exporters import ExportConfig, run_export
from us3l.exporters.switchable import WIDTH_INPUT, fix_width, switchable_runner, switchable_table

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ARCH, LADDER = "us_resnet_mini", "0.25,0.3,0.5,1.0"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The switchable file of a ladder and the per-width files of the same ladder."""
    root = tmp_path_factory.mktemp("switch")
    sw = run_export(ExportConfig(arch=ARCH, widths=LADDER, out_dir=str(root / "sw"), switchable=True))
    per = run_export(ExportConfig(arch=ARCH, widths=LADDER, out_dir=str(root / "per")))
    return sw.artifacts[0], per


def test_one_file_with_a_width_index_and_the_per_width_outputs(files):
    art, per = files
    model = onnx.load(str(art.path))
    onnx.checker.check_model(model, full_check=True)
    inputs = {i.name: i for i in model.graph.input}
    assert set(inputs) == {"input", WIDTH_INPUT}
    assert inputs[WIDTH_INPUT].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert len(inputs[WIDTH_INPUT].type.tensor_type.shape.dim) == 0
    per_model = onnx.load(str(per.artifacts[0].path))
    assert [(o.name, len(o.type.tensor_type.shape.dim)) for o in model.graph.output] == \
        [(o.name, len(o.type.tensor_type.shape.dim)) for o in per_model.graph.output]
    top = Counter(n.op_type for n in model.graph.node)
    assert top["If"] == 1 and top["Conv"] == 0  # a balanced tree of Ifs: depth 2 for 4 widths
    inner = [a.g for n in model.graph.node if n.op_type == "If" for a in n.attribute]
    assert {g.name for g in inner} == {"widths_0_2", "widths_2_4"}
    # conv weights once, at the widest width, at the top level; nothing per branch but BN scale/shift and slice bounds
    convs = [m for m in get_model(ARCH).modules() if isinstance(m, torch.nn.Conv2d)]
    shared = {i.name: tuple(i.dims) for i in model.graph.initializer}
    assert sorted(shared.values()) == sorted(tuple(c.weight.shape) for c in convs)
    table = switchable_table(model)
    assert [r["width"] for r in table] == [0.25, 0.3, 0.5, 1.0] and [r["index"] for r in table] == [0, 1, 2, 3]
    assert all(r["channels"] and r["macs"] > 0 for r in table)
    side = json.loads(art.sidecar.read_text())
    assert side["switchable"]["input"] == WIDTH_INPUT and side["export"]["method"] == "switchable"
    assert side["switchable"]["size_over_widest"] == round(art.path.stat().st_size / per.for_width(1.0).path.stat().st_size, 4)
    assert art.path.stat().st_size < 1.05 * per.for_width(1.0).path.stat().st_size
    text = art.sidecar.read_text()  # no absolute path of this machine, nor the branches' temporary folder
    assert str(art.path.parent.parent) not in text and "us3l-switchable-" not in text
    assert side["parity"]["passed"] and len(side["parity"]["per_index"]) == 4


def test_every_index_matches_its_per_width_file_and_a_foreign_index_fails(files):
    art, per = files
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    for row in json.loads(art.sidecar.read_text())["switchable"]["index"]:
        sess = ort.InferenceSession(str(per.for_width(row["width"]).path), providers=["CPUExecutionProvider"])
        want = sess.run(None, {"input": x})[0]
        got = switchable_runner(art.path, row["index"])(x)
        assert got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * (1 + np.abs(want).max())
    with pytest.raises(ConfigError, match="outside this file's 0..3"):
        switchable_runner(art.path, 4)
    raw = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception):  # noqa: B017 - ORT's error type varies by version; the file itself refuses
        raw.run(None, {"input": x, WIDTH_INPUT: np.asarray(7, np.int64)})


def test_fixing_the_index_gives_the_per_width_graph(files):
    art, per = files
    model = onnx.load(str(art.path))
    x = np.random.default_rng(1).standard_normal((3, 3, 16, 16)).astype(np.float32)
    for index, w in enumerate((0.25, 0.3, 0.5, 1.0)):
        fixed = fix_width(model, index)
        plain = onnx.load(str(per.for_width(w).path))
        assert [n.op_type for n in fixed.graph.node] == [n.op_type for n in plain.graph.node]
        assert [i.name for i in fixed.graph.input] == ["input"]
        out = ort.InferenceSession(fixed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        want = ort.InferenceSession(str(per.for_width(w).path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        assert np.abs(out - want).max() <= 1e-4 * (1 + np.abs(want).max())


def test_export_takes_widths_out_of_the_file_and_refuses_what_it_cannot(files, tmp_path, message_lines):
    art, _ = files
    res = run_export(ExportConfig(checkpoint=str(art.path), widths="0.3", out_dir=str(tmp_path / "fixed")))
    side = json.loads(res.artifacts[0].sidecar.read_text())
    assert res.artifacts[0].path.name == "us_resnet_mini_w0.3.onnx"
    assert side["export"] == {**side["export"], "method": "fixed", "width_index": 1} and side["parity"]["passed"]
    assert str(tmp_path) not in res.artifacts[0].sidecar.read_text()
    runner = CliRunner()
    missing = runner.invoke(app, ["export", str(art.path), "--widths", "0.4", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "holds no width 0.4; it holds 0.25, 0.3, 0.5, 1.0" in missing.output
    trt = runner.invoke(app, ["export", str(art.path), "--widths", "0.5", "--format", "trt", "--out", str(tmp_path / "t")])
    assert trt.exit_code == 2 and "TensorRT" in trt.output and "Traceback" not in trt.output
    for args, words in ((["--format", "trt"], "one ONNX file in fp32 or fp16"),
                        (["--precision", "int8"], "one ONNX file in fp32 or fp16"),
                        (["--arch", "us_resnet18_cifar", "--widths", "0.25:1.0:0.025"], "at most 16 distinct widths")):
        bad = runner.invoke(app, ["export", "--arch", ARCH, "--switchable", "--out", str(tmp_path / "r"), *args])
        assert bad.exit_code == 2 and words in bad.output and len(message_lines(bad.output)) <= 2, bad.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "r").exists()


def test_fp16_switchable_holds_its_gate_at_every_index(tmp_path):
    res = run_export(ExportConfig(arch=ARCH, widths="0.25,1.0", out_dir=str(tmp_path), switchable=True, precision="fp16"))
    side = json.loads(res.artifacts[0].sidecar.read_text())
    assert res.artifacts[0].path.name.endswith("_switchable_fp16.onnx")
    assert [r["mean_cosine"] >= 0.999 for r in side["parity"]["per_index"]] == [True, True]


def test_bench_measures_a_switchable_file_per_width(files, tmp_path):
    from us3l.api import bench

    art, _ = files
    res = bench(art.path, device="cpu", batches=(1, 2), rounds=1, duration_s=0.05, warmup_ms=5, budget_ms=50,
                metric="p50", out=tmp_path / "b", plot=False)
    rows = res.report["results"]
    assert sorted({r["width"] for r in rows}) == [0.25, 0.3, 0.5, 1.0] and len(rows) == 8
    assert len({r["artifact"] for r in rows}) == 1 and not Path(rows[0]["artifact"]).is_absolute()
    assert (tmp_path / "b" / rows[0]["artifact"]).resolve() == art.path.resolve()  # named from the report's folder
    assert res.report["deploy"]["width_index"] == [0.25, 0.3, 0.5, 1.0].index(res.report["deploy"]["width"])
    with pytest.raises(ConfigError, match="holds no width 0.35; it holds 0.25, 0.3, 0.5, 1.0"):
        bench(art.path, device="cpu", widths="0.35", out=tmp_path / "c")


def test_trtexec_builds_each_width_fixed_out_of_the_switchable_file(files, tmp_path):
    """trtexec cannot run here: the stand-in script of tests/benchmarks/test_trtexec_runner.py plays it
    (records its command lines, keeps the ONNX it was given); what is tested is that each engine is
    built from a plain one-width graph taken out of the switchable file."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from test_trtexec_runner import devices_file, stand_in

    from us3l.benchmarks import BenchConfig, run_bench

    art, _ = files
    script = stand_in(tmp_path, write_times=True)
    cfg = BenchConfig(artifact=art.path, device="fakejet", devices_file=devices_file(tmp_path, script),
                      widths="0.25,1.0", batches=(1,), rounds=1, warmup_ms=10, duration_s=0.05, out_dir=tmp_path / "o")
    report = run_bench(cfg).report
    assert sorted(r["width"] for r in report["results"]) == [0.25, 1.0]
    builds = [c for c in (tmp_path / "calls.log").read_text().splitlines() if "--saveEngine=" in c]
    assert len(builds) == 2 and all("--fp16" in b for b in builds)
    built = onnx.load(str(tmp_path / "built.onnx"))  # the last graph trtexec was given
    assert [i.name for i in built.graph.input] == ["input"] and "If" not in {n.op_type for n in built.graph.node}
    fixed = sorted((tmp_path / "o" / "artifacts").glob("*.onnx"))
    assert len(fixed) == 2 and all(".w0.25." in f.name or ".w1.0." in f.name for f in fixed)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A fine-tuned digits classifier, its switchable logits file and its per-width logits files."""
    from us3l.trainer.finetune import FinetuneConfig, run_finetune

    root = tmp_path_factory.mktemp("task")
    torch.manual_seed(0)
    save_checkpoint(Checkpoint.from_model(get_model(ARCH), method="us3l", dataset=DatasetSpec("digits").to_dict()),
                    root / "ssl" / "checkpoint.pt")
    out = run_finetune(FinetuneConfig(checkpoint=str(root / "ssl" / "checkpoint.pt"), out_dir=str(root / "ft"),
                                      epochs=1, max_steps_per_epoch=6, calib_batches=2, widths="0.25,1.0"))
    sw = run_export(ExportConfig(checkpoint=str(out.checkpoint), widths="0.25,1.0", out_dir=str(root / "sw"),
                                 outputs="logits", switchable=True))
    per = run_export(ExportConfig(checkpoint=str(out.checkpoint), widths="0.25,1.0", out_dir=str(root / "per"),
                                  outputs="logits"))
    return out.checkpoint, sw.artifacts[0], per


def test_predict_width_on_real_images_gives_the_per_width_top1(task, tmp_path, message_lines):
    from PIL import Image

    from us3l.api import predict

    _, art, per = task
    with np.load(DIGITS_FILE) as a:
        images, test_idx = a["images"], a["test_idx"][:16]
    for i in test_idx:  # held-out digits as 8-bit grayscale PNG files
        Image.fromarray(np.round(images[i] * 255.0 / 16).astype(np.uint8), "L").save(tmp_path / f"digit_{i}.png")
    for w in (0.25, 1.0):
        got = predict(art.path, tmp_path, top_k=2, width=w)
        want = predict(per.for_width(w).path, tmp_path, top_k=2)
        assert [p.top[0].index for p in got.predictions] == [p.top[0].index for p in want.predictions]
        assert np.allclose([p.top[0].prob for p in got.predictions], [p.top[0].prob for p in want.predictions], atol=1e-4)
        assert got.width == w
    runner = CliRunner()
    ok = runner.invoke(app, ["predict", str(art.path), str(tmp_path), "--width", "0.25", "--json"])
    assert ok.exit_code == 0, ok.output
    for args, words in ((["--width", "0.5"], f"{art.path.name} holds no width 0.5; it holds 0.25, 1.0"),
                        ([], "holding widths 0.25, 1.0; choose one with --width")):
        bad = runner.invoke(app, ["predict", str(art.path), str(tmp_path), *args])
        assert bad.exit_code == 2 and words in bad.output and len(message_lines(bad.output)) == 1, bad.output


def test_eval_measures_the_switchable_file_per_width(task):
    from us3l.api import evaluate

    ckpt, art, per = task
    res = evaluate(ckpt, "0.25,1.0", artifacts=[art.path])
    rows = {r.width: r for r in res.results}
    assert sorted(rows) == [0.25, 1.0]
    plain = {r.width: r for r in evaluate(ckpt, artifacts=[per.for_width(0.25).path, per.for_width(1.0).path]).results}
    assert all(rows[w].top1 == plain[w].top1 for w in (0.25, 1.0))
    with pytest.raises(ConfigError, match="holds no width 0.5"):
        evaluate(ckpt, "0.5", artifacts=[art.path])


def test_bench_joins_the_rows_eval_measured_on_the_switchable_file(task, tmp_path):
    """eval --artifact writes one row per width of the switchable file (its sha256, its width); bench of
    that file joins each timed width to its own row, and a width eval did not measure stays unknown."""
    from us3l.api import bench, evaluate

    ckpt, art, _ = task
    table = tmp_path / "accuracy.json"
    measured = {r.width: r.top1 for r in evaluate(ckpt, "0.25", artifacts=[art.path], out=table).results}
    res = bench(art.path, device="cpu", batches=(1,), rounds=1, duration_s=0.05, warmup_ms=5, budget_ms=1000,
                metric="p50", accuracy=table, out=tmp_path / "b", plot=False)
    rows = {r["width"]: r for r in res.report["results"]}
    assert sorted(rows) == [0.25, 1.0]
    assert rows[0.25]["sha256"].split("#")[0] == rows[1.0]["sha256"].split("#")[0]  # one file, an index per width
    assert rows[0.25]["accuracy"] == measured[0.25] and rows[0.25]["accuracy_source"] == "measured"
    assert rows[1.0]["accuracy"] is None and rows[1.0]["accuracy_source"] == "unknown"  # never another width's
    assert res.report["chosen"]["width"] == 0.25  # the only width with a measured accuracy
