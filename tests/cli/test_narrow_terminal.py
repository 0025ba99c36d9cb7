"""At 80 columns tables never break a file name inside a cell (issue 25, item 2): the export table
keeps whole names when they fit, else shows what tells the files apart and names the shared part
on one line below; predict numbers its rows and lists long image names below."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

import us3l.cli.export as export_cli
import us3l.cli.predict as predict_cli


@pytest.fixture
def narrow(monkeypatch):
    out = io.StringIO()
    console = Console(file=out, width=80, color_system=None)
    monkeypatch.setattr("us3l.cli.common.console", console)
    monkeypatch.setattr(predict_cli, "console", console)
    return out


def _artifacts(stem: str) -> SimpleNamespace:
    arts = [SimpleNamespace(width=w, precision="fp32", aliases=[], macs=1e6 * i, params=1e5 * i, cached=False,
                            channels={f"c{k}": 8 * i * k for k in range(1, 8)}, parity={"max_abs_err": 1e-6},
                            path=Path(f"runs/x/{stem}_w{w}.onnx"))
            for i, w in enumerate((0.25, 0.5, 1.0), 1)]
    return SimpleNamespace(artifacts=arts, out_dir=Path("runs/x"), seconds=3.2)


def test_short_names_stay_whole_in_the_table(narrow):
    export_cli.render(_artifacts("ckpt"))
    text = narrow.getvalue()
    assert all(len(line) <= 80 for line in text.splitlines()), text
    for w in ("0.25", "0.5", "1.0"):
        assert f"│ ckpt_w{w}.onnx " in text, text
    assert "files:" not in text


def test_long_names_are_not_broken_inside_a_cell(narrow):
    stem = "my_quite_long_experiment_name_on_fashion_mnist_checkpoint_logits"
    export_cli.render(_artifacts(stem))
    lines = narrow.getvalue().splitlines()
    cells = [line for line in lines if line.startswith("│")]
    assert all(len(line) <= 80 for line in lines[:-1]), lines
    assert not any(stem[:12] in line for line in cells), cells  # no piece of a name inside a cell
    assert any(" w0.25 " in line for line in cells) and any(" w1.0 " in line for line in cells), cells
    assert lines[-1] == f"files: runs/x/{stem}_{{w0.25,w0.5,w1.0}}.onnx"
    assert all(not line.startswith("│") or "…" not in line for line in cells), cells  # nothing cut short either


def test_long_image_names_are_listed_below(narrow):
    from us3l.api.tasks import ClassScore, Prediction

    top = (ClassScore(7, "7", 0.9), ClassScore(1, "1", 0.05))
    long_name = Path("photos/2026-12-04_camera-03_frame-000123_cropped_and_resized_to_28px.png")
    result = SimpleNamespace(artifact=Path("c.onnx"), outputs="logits",
                             predictions=[Prediction(image=Path("a.png"), top=top),
                                          Prediction(image=long_name, top=top)])
    predict_cli.render(result)
    lines = narrow.getvalue().splitlines()
    assert any(line.startswith("│ #2 ") for line in lines), lines
    assert f"#2 {long_name}" in lines
