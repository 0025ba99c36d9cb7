"""The accuracy-table contract between ``us3l eval`` / ``us3l finetune`` (writers) and ``us3l bench``
(reader). Accuracy belongs to a file: every row says exactly what was measured.

``accuracy.json`` lives beside the checkpoint (inside a packed model directory)::

    {"format": 2, "checkpoint": "<content hash>",
     "results": [
       {"width": 0.25, "precision": "fp32", "outputs": "features", "protocol": "knn", "knn": 0.93,
        "source": "pytorch", "sha256": "<state hash>", "feature_dim": 32, "details": {...}, "measured_at": "..."},
       {"width": 0.25, "precision": "int8", "outputs": "logits", "protocol": "top1", "top1": 0.92,
        "source": "artifact", "artifact": "checkpoint_logits_w0.25_onnx_int8.onnx", "sha256": "<file sha256>", ...}]}

- ``protocol`` is ``top1`` (a classifier's own predictions), ``knn`` or ``linear`` (probes on
  features); the value is under the key of the same name, a fraction in [0, 1].
- ``outputs`` is what the measured network returns: ``features``, ``logits`` or ``probs``.
- ``sha256``: for an artifact row, the sha256 of the file measured (computed from the file); for a
  PyTorch row (``source: pytorch``), the hash of the checkpoint state measured (the backbone's
  ``content_hash`` for features; :func:`us3l.core.taskmodel.classifier_state_hash` for a classifier).
- ``details``: how it was measured (dataset, BN statistics, divisor, kNN ``k``, probe recipe...).

**Tables only grow** (:func:`merge_rows`, :func:`update_accuracy`): a row is replaced only by a
newer measurement of the same thing, i.e. the same :func:`row_identity` (sha256, width, precision,
outputs, protocol, dataset); rows of other protocols, precisions or files are kept. A table that
describes another checkpoint (its ``checkpoint`` hash differs) is replaced as a whole.

Files of format 1 (no ``format`` key; one row may hold ``knn`` and ``linear``; no outputs, protocol or
sha256 per row) are read by :func:`normalize_rows`: such a row becomes one row per protocol, its
outputs inferred (``top1``: ``logits``), its sha256 unknown unless it was an artifact row. Readers
also accept a bare list of rows.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import DataError
from .files import atomic_write_json
from .precision import PRECISIONS, Precision

ACCURACY_FILE = "accuracy.json"
FORMAT = 2
PROTOCOLS = ("top1", "linear", "knn")  # bench's preference when one file has several
OUTPUTS = ("features", "logits", "probs")


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
        for key in PROTOCOLS:
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise DataError(f"accuracy file {path}: row {i} has {key} {value!r}; valid: a fraction in [0, 1] or null")
        if row.get("protocol") is not None and row["protocol"] not in PROTOCOLS:
            raise DataError(f"accuracy file {path}: row {i} has protocol {row.get('protocol')!r}; "
                            f"valid: {', '.join(PROTOCOLS)}")
        if row.get("outputs") is not None and row["outputs"] not in OUTPUTS:
            raise DataError(f"accuracy file {path}: row {i} has outputs {row.get('outputs')!r}; "
                            f"valid: {', '.join(OUTPUTS)}")
        if row_precision(row) not in PRECISIONS:
            raise DataError(f"accuracy file {path}: row {i} has precision {row.get('precision')!r}; "
                            f"valid: {', '.join(PRECISIONS)}")
    return data


def read_accuracy(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of an accuracy file (see :func:`read_accuracy_file`)."""
    return read_accuracy_file(path)["results"]


# --------------------------------------------------------------------------- rows that belong to a file


def row_protocols(row: dict[str, Any]) -> list[str]:
    """The protocols a row holds a value for (a format-1 row may hold ``knn`` and ``linear``)."""
    if row.get("protocol") in PROTOCOLS:
        return [row["protocol"]]
    return [p for p in PROTOCOLS if isinstance(row.get(p), (int, float)) and not isinstance(row.get(p), bool)]


def normalize_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows in format 2: one per protocol, each with ``precision``, ``outputs`` and ``protocol``
    (format-1 rows are split and completed; their ``sha256`` stays as recorded, or ``None``)."""
    out = []
    for row in rows:
        protos = row_protocols(row)
        for proto in protos:
            new = {k: v for k, v in row.items() if k not in PROTOCOLS or k == proto}
            new["precision"] = row_precision(row)
            new["protocol"] = proto
            new.setdefault("outputs", "logits" if proto == "top1" else "features")
            new.setdefault("sha256", None)
            if proto != "knn":
                new.pop("knn_k", None)
            out.append(new)
    return out


def row_identity(row: dict[str, Any]) -> tuple[Any, ...]:
    """What a row measured: ``(sha256, width, precision, outputs, protocol, dataset name)``. A newer
    row with the same identity replaces the older one; any other row is kept."""
    dataset = ((row.get("details") or {}).get("dataset") or {}).get("name")
    return (row.get("sha256"), round(float(row["width"]), 6), row_precision(row), row.get("outputs"),
            row.get("protocol"), dataset)


def _order(row: dict[str, Any]) -> tuple[Any, ...]:
    from .precision import precision_rank

    return (round(float(row["width"]), 6), precision_rank(row_precision(row)), str(row.get("outputs")),
            PROTOCOLS.index(row["protocol"]) if row.get("protocol") in PROTOCOLS else 9, str(row.get("source")),
            str(row.get("artifact") or ""))


def merge_rows(old: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with every row of ``new`` added, replacing the old rows of the same :func:`row_identity`
    (tables only grow), in a stable order (width, precision, outputs, protocol)."""
    merged = {row_identity(r): r for r in normalize_rows(old)}
    merged.update({row_identity(r): r for r in normalize_rows(new)})
    return sorted(merged.values(), key=_order)


def stamp(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with ``measured_at`` (UTC, seconds)."""
    return {**row, "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def update_accuracy(path: str | os.PathLike, checkpoint_hash: str, rows: Iterable[dict[str, Any]],
                    state_hashes: dict[str, str] | None = None) -> tuple[Path, list[dict[str, Any]], str | None]:
    """Merge ``rows`` into the table at ``path`` (written atomically; tables only grow).

    Args:
        state_hashes: ``{outputs: state hash}`` of this checkpoint's PyTorch networks, filled into
            format-1 PyTorch rows (which recorded none) so that a new measurement replaces them.

    Returns:
        ``(path, all rows now in the table, note)``; ``note`` says why earlier rows were dropped
        (the file described another checkpoint, or could not be read), else ``None``.
    """
    path = Path(path)
    old: list[dict[str, Any]] = []
    note = None
    if path.is_file():
        try:
            data = read_accuracy_file(path)
        except DataError as exc:
            note = f"{exc}; the table is rewritten"
        else:
            if data.get("checkpoint") in (None, checkpoint_hash):
                old = data["results"]
                legacy = data.get("protocol") or {}
                if data.get("format") is None:  # format 1: one protocol for the whole file, no state hashes
                    details = {k: v for k, v in legacy.items() if k != "method"}
                    old = [{**r, "details": r.get("details") or details} for r in normalize_rows(old)]
                    for r in old:
                        if r.get("source", "pytorch") == "pytorch" and not r.get("sha256"):
                            r["sha256"] = (state_hashes or {}).get(r["outputs"])
            else:
                note = (f"{path} described another checkpoint (hash {str(data.get('checkpoint'))[:12]}); its "
                        f"{len(data['results'])} row(s) are replaced")
    merged = merge_rows(old, rows)
    atomic_write_json(path, {"format": FORMAT, "checkpoint": checkpoint_hash, "results": merged})
    return path, merged, note


def table_rows(rows: list[dict[str, Any]], details: dict[str, Any]) -> list[dict[str, Any]]:
    """``accuracy.json`` rows of evaluation rows: one per protocol measured, each with its
    ``protocol`` and the ``details`` of how it was measured, stamped with the time."""
    out = []
    for row in rows:
        for proto in PROTOCOLS:
            if row.get(proto) is None:
                continue
            new = {k: v for k, v in row.items() if (k not in PROTOCOLS or k == proto) and v is not None}
            if proto != "knn":
                new.pop("knn_k", None)
            mine = {k: v for k, v in details.items() if k not in PROTOCOLS or k == proto}
            if "divisor" in new:  # an artifact's own channel divisor
                mine["divisor"] = new.pop("divisor")
            out.append(stamp({**new, "protocol": proto, "details": mine}))
    return out
