"""One precision vocabulary: the Precision enum, its per-precision plan, and no other spelling of it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from us3l.core.errors import ConfigError
from us3l.core.precision import PLANS, PRECISIONS, Precision, precision_plan, precision_rank

PACKAGE = Path(__file__).resolve().parents[2] / "us3l"


def test_precision_is_a_string_for_json_configs_and_tables():
    assert PRECISIONS == ("fp32", "fp16", "int8") and Precision.INT8 == "int8" and f"{Precision.FP16}" == "fp16"
    assert json.dumps({"precision": Precision.INT8}) == '{"precision": "int8"}'
    assert Precision.parse(" INT8 ") is Precision.INT8 and Precision.parse(Precision.FP16) is Precision.FP16
    assert Precision.parse_list("fp32, int8,fp32") == (Precision.FP32, Precision.INT8)


@pytest.mark.parametrize("bad", ["bf16", "", "fp32,,fp8"])
def test_a_bad_precision_is_one_line_naming_the_valid_ones(bad):
    with pytest.raises(ConfigError, match=r"valid: fp32, fp16, int8") as err:
        Precision.parse_list(bad) if "," in bad or not bad else Precision.parse(bad)
    assert "\n" not in str(err.value)


def test_plans_hold_the_per_precision_facts():
    fp32, fp16, int8 = (PLANS[p] for p in Precision)
    assert [p.rank for p in (fp32, fp16, int8)] == [0, 1, 2] and precision_rank("nonsense") == 3
    assert not fp32.converted and fp16.converted and int8.converted and int8.calibrated and not fp16.calibrated
    assert fp32.min_cosine is None and fp16.min_cosine == 0.999 and int8.min_cosine == 0.95
    assert fp32.trtexec_flags == () and fp16.trtexec_flags == ("--fp16",) and int8.trtexec_flags == ("--int8", "--fp16")
    assert (fp32.trt_onnx, fp16.trt_onnx, int8.trt_onnx) == (None, "fp16", "int8-qdq")
    assert precision_plan("int8") is int8 and Precision.FP16.plan is fp16 and Precision.INT8.reduced


def _precision_spellings(path: Path) -> list[str]:
    """Comparisons with a precision name, membership in a literal precision list, the whole list spelled out."""
    names = set(PRECISIONS)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(n, ast.Constant) and n.value in names for n in sides):
                found.append(f"{path.name}:{node.lineno}: compared with a precision name")
            if any(isinstance(n, (ast.Tuple, ast.List, ast.Set))
                   and any(isinstance(e, ast.Constant) and e.value in names for e in n.elts) for n in sides):
                found.append(f"{path.name}:{node.lineno}: tested against a literal precision list")
        elif isinstance(node, (ast.Tuple, ast.List)) and \
                {e.value for e in node.elts if isinstance(e, ast.Constant)} >= names:
            found.append(f"{path.name}:{node.lineno}: the precision list spelled out")
    return found


def test_the_vocabulary_is_spelled_out_once(tmp_path):
    found = [f for p in sorted(PACKAGE.rglob("*.py")) if p.name != "precision.py" or p.parent.name != "core"
             for f in _precision_spellings(p)]
    assert found == []
    planted = tmp_path / "planted.py"  # the check is not vacuous
    planted.write_text("def f(p):\n    return p == 'int8' or p in ('fp16',)\nALL = ('fp32', 'fp16', 'int8')\n")
    assert len(_precision_spellings(planted)) == 3
