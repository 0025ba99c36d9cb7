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
