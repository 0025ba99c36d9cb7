"""Accuracy belongs to a file (issue 24, items 1, 2 and 6), through the CLI on a tiny fine-tuned digits
classifier: bench times the classifier by default, joins each row to the accuracy measured on that
very file (sha256), --measure-accuracy measures exactly the timed files, deploy names the timed
classifier file; eval --artifact after finetune keeps the finetune rows; a plain eval of a task
checkpoint measures its classifier's top-1 and --method knn its backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from us3l.cli.main import app
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.files import sha256_file
from us3l.core.models import get_model
from us3l.core.taskmodel import classifier_state_hash

QUICK = ["--iterations", "3", "--rounds", "1", "--warmup-ms", "0", "--no-plot"]


def _invoke(*args: str):
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("acc")
    torch.manual_seed(0)
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini"), method="us3l",
                                          dataset=DatasetSpec("digits").to_dict()), root / "ssl" / "checkpoint.pt")
    _invoke("finetune", root / "ssl" / "checkpoint.pt", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--widths", "0.5,1.0", "--out", root / "ft")
    return root / "ft" / "checkpoint.pt"


def _table(ckpt: Path) -> list[dict]:
    return json.loads(ckpt.with_name("accuracy.json").read_text())["results"]


def test_eval_artifact_after_finetune_keeps_the_finetune_rows(finetuned, tmp_path):
    ft_rows = _table(finetuned)
    task = load_checkpoint(finetuned)
    assert [(r["width"], r["protocol"], r["outputs"], r["source"]) for r in ft_rows] == \
        [(0.5, "top1", "logits", "pytorch"), (1.0, "top1", "logits", "pytorch")]
    assert all(r["sha256"] == classifier_state_hash(task) and r["bn"] == "bank" for r in ft_rows)
    _invoke("export", finetuned, "--width", "0.5", "--precision", "int8", "--outputs", "logits", "--out", tmp_path)
    int8 = next(tmp_path.glob("*_onnx_int8.onnx"))
    _invoke("eval", finetuned, "--artifact", int8)
    rows = _table(finetuned)
    assert [r for r in rows if r["source"] == "pytorch"] == ft_rows  # untouched
    (new,) = [r for r in rows if r["source"] == "artifact"]
    assert (new["precision"], new["outputs"], new["protocol"], new["sha256"]) == \
        ("int8", "logits", "top1", sha256_file(int8))
    # a plain eval of the task checkpoint measures the classifier (top-1), replacing only its own rows
    out = json.loads(_invoke("eval", finetuned, "--widths", "0.5", "--json").stdout)
    assert [(r["width"], r["outputs"]) for r in out] == [(0.5, "logits")] and out[0]["top1"] is not None
    rows = _table(finetuned)
    assert len(rows) == 3 and {r["protocol"] for r in rows} == {"top1"}
    # --method knn measures the backbone's features: rows of another protocol are added, none dropped
    _invoke("eval", finetuned, "--widths", "0.5", "--method", "knn", "--calib-batches", "1")
    rows = _table(finetuned)
    knn = [r for r in rows if r["protocol"] == "knn"]
    assert len(rows) == 4 and len(knn) == 1 and knn[0]["outputs"] == "features"
    assert knn[0]["sha256"] == task.content_hash


def test_bench_times_the_classifier_and_joins_by_the_timed_file(finetuned, tmp_path):
    out = tmp_path / "bench"
    res = _invoke("bench", finetuned, "--widths", "0.5,1.0", "--precision", "fp32,int8", "--budget-ms", "1000",
                  "--measure-accuracy", "--out", out, *QUICK)
    report = json.loads((out / "report.json").read_text())
    assert report["outputs"] == "logits"  # the default for a task checkpoint
    table = {r["sha256"]: r for r in _table(finetuned) if r["source"] == "artifact"}
    assert len(report["results"]) == 4
    for row in report["results"]:
        timed = out / row["artifact"]  # named from the report's folder
        assert row["outputs"] == "logits" and "_logits_" in timed.name
        assert row["sha256"] == sha256_file(timed)  # the timed file
        measured = table[row["sha256"]]  # ...has its own row, measured on it
        assert measured["artifact"] == timed.name and measured["precision"] == row["precision"]
        assert row["accuracy"] == measured["top1"] and row["accuracy_source"] == "measured"
        assert row["accuracy_protocol"] == "top1"
    deploy = report["deploy"]
    assert deploy["outputs"] == "logits" and deploy["sha256"] == sha256_file(out / deploy["artifact"])
    assert deploy["artifact"] in {r["artifact"] for r in report["results"]}
    assert "notice" not in res.output  # every timed file has its row
    # a second run measures nothing again (tables only grow), and the features of the backbone can be timed too
    before = _table(finetuned)
    feats = _invoke("bench", finetuned, "--widths", "0.5", "--outputs", "features", "--out", tmp_path / "f", *QUICK)
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    (row,) = report["results"]
    assert row["outputs"] == "features" and row["accuracy"] is None and row["accuracy_source"] == "unknown"
    assert "notice:" in feats.output and "has no row measured on 1 timed file(s)" in report["accuracy_unknown_note"]
    assert _table(finetuned) == before
