"""The accuracy-table contract between ``us3l eval`` (writer) and ``us3l bench`` (reader).

``accuracy.json`` lives beside the checkpoint::

    {"checkpoint": "<content hash>", "protocol": {...},
     "results": [{"width": 0.25, "precision": "fp32", "knn": 0.93, "linear": 0.95},
                 {"width": 0.25, "precision": "int8", "knn": 0.92, "source": "artifact", "artifact": "..."}, ...]}

Rows are keyed by (width, precision): ``fp32`` rows come from the PyTorch network (or an FP32
artifact), ``fp16``/``int8`` rows from ``us3l eval --artifact`` on that exported file. A row without
``precision`` (files from before precisions existed) is an ``fp32`` row. Accuracies are fractions
in [0, 1]; a missing key means "not measured". Readers also accept a bare list of rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import DataError
from .files import atomic_write_json
from .precision import PRECISIONS, Precision

ACCURACY_FILE = "accuracy.json"


def row_precision(row: dict[str, Any]) -> str:
    """The precision a row describes (``fp32`` when the row predates precisions)."""
    return str(row.get("precision") or Precision.FP32.value)


def row_key(row: dict[str, Any]) -> tuple[float, str]:
    """``(width rounded to 6 decimals, precision)``: the identity of a row in the table."""
    return round(float(row["width"]), 6), row_precision(row)


def write_accuracy(path: str | os.PathLike, rows: list[dict[str, Any]], protocol: dict[str, Any],
                   checkpoint_hash: str) -> Path:
    """Write an accuracy table atomically.

    Args:
        path: destination, normally ``accuracy.json`` next to the checkpoint.
        rows: per-width rows ``{"width", "knn"?, "linear"?, ...}``.
        protocol: how they were measured.
        checkpoint_hash: the checkpoint's ``content_hash`` (joins the table to its weights).
    """
    return atomic_write_json(path, {"checkpoint": checkpoint_hash, "protocol": protocol, "results": rows})


def read_accuracy_file(path: str | os.PathLike) -> dict[str, Any]:
    """The whole table as ``{"checkpoint", "protocol", "results"}`` (a bare list gets empty metadata).

    Raises:
        DataError: missing file, invalid JSON, no results list, or rows without a numeric ``width``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"accuracy file {path} does not exist; create it with 'us3l eval CKPT'") from None
    except OSError as exc:
        raise DataError(f"cannot read accuracy file {path} ({exc.strerror})") from None
    except ValueError as exc:
        raise DataError(f"accuracy file {path} is not JSON ({str(exc)[:80]})") from None
    if isinstance(data, list):
        data = {"checkpoint": None, "protocol": {}, "results": data}
    rows = data.get("results") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"accuracy file {path} has no 'results' list; expected {{'results': [{{'width', 'knn'?, 'linear'?}}]}}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("width"), (int, float)) \
                or isinstance(row.get("width"), bool) or not 0 < row["width"] <= 1:
            raise DataError(f"accuracy file {path}: row {i} has no 'width' in (0, 1]")
        for key in ("knn", "linear"):
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise DataError(f"accuracy file {path}: row {i} has {key} {value!r}; valid: a fraction in [0, 1] or null")
        if row_precision(row) not in PRECISIONS:
            raise DataError(f"accuracy file {path}: row {i} has precision {row.get('precision')!r}; "
                            f"valid: {', '.join(PRECISIONS)}")
    return data


def read_accuracy(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of an accuracy file (see :func:`read_accuracy_file`)."""
    return read_accuracy_file(path)["results"]
