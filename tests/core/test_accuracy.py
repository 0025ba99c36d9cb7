"""The accuracy.json contract (written by eval, read by bench)."""

import json

import pytest

from us3l.core.accuracy import read_accuracy, read_accuracy_file, write_accuracy
from us3l.core.errors import DataError


def test_round_trip_and_bare_list(tmp_path):
    rows = [{"width": 0.25, "knn": 0.8}, {"width": 1.0, "knn": 0.9, "linear": 0.92}]
    path = write_accuracy(tmp_path / "accuracy.json", rows, {"method": "both"}, "h")
    assert read_accuracy_file(path) == {"checkpoint": "h", "protocol": {"method": "both"}, "results": rows}
    (tmp_path / "bare.json").write_text(json.dumps(rows))
    assert read_accuracy(tmp_path / "bare.json") == rows


@pytest.mark.parametrize("content,msg", [("{", "not JSON"), ('{"results": 3}', "no 'results' list"),
                                         ('[{"knn": 1}]', "row 0 has no 'width'")])
def test_malformed_tables_are_one_line_errors(tmp_path, content, msg):
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(DataError, match=msg):
        read_accuracy(path)


def _row(sha, width=0.5, precision="fp32", outputs="logits", protocol="top1", value=0.9, dataset="digits", **kw):
    return {"width": width, "precision": precision, "outputs": outputs, "protocol": protocol, protocol: value,
            "sha256": sha, "details": {"dataset": {"name": dataset}}, **kw}


def test_tables_only_grow_and_same_things_are_replaced(tmp_path):
    from us3l.core.accuracy import merge_rows, row_identity, update_accuracy

    path = tmp_path / "accuracy.json"
    first = [_row("a"), _row("a", width=1.0), _row("b", precision="int8", source="artifact")]
    update_accuracy(path, "ck", first)
    # another protocol, another file, another dataset: added; the same thing measured again: replaced
    newer = [_row("a", value=0.95), _row("c", outputs="features", protocol="knn", value=0.8),
             _row("a", dataset="fashion-mnist", value=0.5)]
    _, rows, note = update_accuracy(path, "ck", newer)
    assert note is None and len(rows) == 5
    by_id = {row_identity(r): r for r in rows}
    assert by_id[row_identity(_row("a"))]["top1"] == 0.95 and by_id[row_identity(_row("a", width=1.0))]["top1"] == 0.9
    assert read_accuracy_file(path)["format"] == 2 and read_accuracy(path) == rows
    assert merge_rows(rows, []) == rows  # stable
    # a table of another checkpoint is replaced, and says so
    _, rows, note = update_accuracy(path, "other", [_row("z")])
    assert len(rows) == 1 and "described another checkpoint" in note


def test_format_one_rows_are_split_and_completed(tmp_path):
    from us3l.core.accuracy import normalize_rows, update_accuracy

    old = [{"width": 0.25, "knn": 0.8, "linear": 0.85, "feature_dim": 32, "knn_k": 20},
           {"width": 0.25, "precision": "int8", "top1": 0.7, "source": "artifact", "sha256": "f1", "artifact": "x.onnx"}]
    rows = normalize_rows(old)
    assert [(r["protocol"], r["outputs"], r["sha256"]) for r in rows] == [("linear", "features", None),
                                                                        ("knn", "features", None),
                                                                        ("top1", "logits", "f1")]
    assert "knn" not in rows[0] and rows[1]["knn_k"] == 20 and "knn_k" not in rows[0]
    path = write_accuracy(tmp_path / "accuracy.json", old, {"method": "both", "divisor": 8}, "ck")
    _, merged, _ = update_accuracy(path, "ck", [], state_hashes={"features": "ck"})
    pytorch = [r for r in merged if r.get("source") is None]
    assert {r["sha256"] for r in pytorch} == {"ck"} and all(r["details"]["divisor"] == 8 for r in pytorch)


def test_unknown_protocols_and_outputs_are_refused(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"results": [{"width": 0.5, "protocol": "svm", "top1": 0.5}]}))
    with pytest.raises(DataError, match="protocol 'svm'"):
        read_accuracy(path)
    path.write_text(json.dumps({"results": [{"width": 0.5, "outputs": "stages", "top1": 0.5}]}))
    with pytest.raises(DataError, match="outputs 'stages'"):
        read_accuracy(path)
    path.write_text(json.dumps({"results": [{"width": 0.5, "top1": 1.5}]}))
    with pytest.raises(DataError, match="top1 1.5"):
        read_accuracy(path)
