"""Every exported file is a valid ONNX model for any consumer (issue 24, item 7): the full checker
passes at every precision, and the FP32 and FP16 files of one ladder run in ``onnx.reference``
(the spec's own evaluator, which needs topologically sorted nodes) with the outputs ONNX Runtime
gives. ONNX Runtime's float16 converter appends its input Casts after their users; the export
sorts them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from us3l.core.errors import ExportError
from us3l.exporters.onnx_graph import checked_bytes, topological_sort


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    from us3l.api import export

    out = tmp_path_factory.mktemp("ladder")
    return {p: export("us_resnet_mini", "0.25,0.5", out=out, precision=p).artifacts for p in ("fp32", "fp16", "int8")}


def test_every_precision_passes_the_full_checker(ladder):
    for precision, arts in ladder.items():
        assert len(arts) == 2
        for art in arts:
            model = onnx.load(str(art.path))
            onnx.checker.check_model(model, full_check=True)  # raises on any defect
            seen = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
            for node in model.graph.node:  # producers come first
                assert all(not name or name in seen for name in node.input), (precision, node.name)
                seen.update(node.output)


def test_fp32_and_fp16_run_in_onnx_reference_as_in_onnx_runtime(ladder):
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)
    for precision, tol in (("fp32", 1e-5), ("fp16", 5e-3)):
        for art in ladder[precision]:
            ref = ReferenceEvaluator(str(art.path)).run(None, {"input": x})[0]
            got = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            assert ref.dtype == got.dtype == np.float32  # FP16 files keep float32 inputs and outputs
            scale = max(1.0, float(np.abs(got).max()))
            assert np.abs(ref - got).max() <= tol * scale, (precision, art.path.name, np.abs(ref - got).max())


def test_the_fp16_converter_output_is_unsorted_until_sorted(ladder):
    from us3l.exporters.onnx_quant import to_fp16

    raw = to_fp16(onnx.load(str(ladder["fp32"][0].path)))
    with pytest.raises(onnx.checker.ValidationError):  # what ONNX Runtime's converter writes
        onnx.checker.check_model(raw, full_check=True)
    assert topological_sort(raw.graph) > 0
    onnx.checker.check_model(raw, full_check=True)
    assert topological_sort(raw.graph) == 0  # sorted stays sorted


def test_sorting_keeps_valid_order_and_refuses_what_cannot_be_ordered():
    def graph(nodes):
        return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                                 [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])

    a = helper.make_node("Relu", ["x"], ["y"], name="a")
    b = helper.make_node("Neg", ["y"], ["z"], name="b")
    c = helper.make_node("Abs", ["x"], ["w"], name="c")
    g = graph([b, c, a])
    assert topological_sort(g) > 0 and [n.name for n in g.node] == ["c", "a", "b"]
    ok = graph([a, c, b])
    assert topological_sort(ok) == 0 and [n.name for n in ok.node] == ["a", "c", "b"]
    loop = graph([helper.make_node("Relu", ["z"], ["y"], name="p"), helper.make_node("Neg", ["y"], ["z"], name="q")])
    with pytest.raises(ExportError, match="cycle"):
        topological_sort(loop)
    bad = helper.make_model(graph([helper.make_node("Relu", ["nowhere"], ["z"])]),
                            opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ExportError, match="failed onnx.checker"):
        checked_bytes(bad, "test ONNX")
