"""Benchmarking a switchable file (``us3l export --switchable``): one artifact per width it holds.

- ONNX Runtime on this host measures the file itself, feeding ``width_index`` for each width
  (one session per width index, as a device switching width at run time would hold one).
- Runners that build from a plain graph (trtexec, TensorRT, the remote ONNX Runtime agent) get
  each width fixed out of the file (:func:`us3l.exporters.switchable.fix_width`: the ``If`` folds
  away), written once beside the reports and reused while the switchable file is unchanged.

Widths are those the file holds (all of them by default); asking for another is one line listing
them. Accuracy belongs to the file timed: rows that ``us3l eval CKPT --artifact FILE`` measured on
this file at each index (same sha256 and ``width_index``), read from ``--accuracy TABLE`` or an
``accuracy.json`` beside the file; the PyTorch figures written into the file's metadata at export
are not joined (they describe another network).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError
from us3l.core.files import sha256_file
from us3l.core.precision import Precision
from us3l.core.width import format_width, round_width

from .artifacts import BenchArtifact

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwitchableSource:
    """A switchable ONNX file as a benchmark source."""

    path: Path
    snap: int = 8

    @functools.cached_property
    def _meta(self) -> dict[str, str]:
        import onnx

        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # onnx raises several types for foreign files
            raise ConfigError(f"{self.path} is not a readable ONNX file ({type(exc).__name__})") from None
        props = {p.key: p.value for p in model.metadata_props}
        if "us3l.switchable" not in props:
            raise ConfigError(f"{self.path.name} is a one-width ONNX file, not a switchable one; bench its checkpoint "
                              "(us3l bench CKPT) or export one with 'us3l export CKPT --switchable'")
        dims = model.graph.input[0].type.tensor_type.shape.dim
        props["@input_shape"] = json.dumps([d.dim_value or 1 for d in dims])
        return props

    @property
    def table(self) -> list[dict[str, Any]]:
        """The index table (``us3l.switchable`` metadata)."""
        return list(json.loads(self._meta["us3l.switchable"]))

    @property
    def precision(self) -> Precision:
        return Precision.parse(self._meta.get("us3l.precision", "fp32"))

    @property
    def outputs(self) -> str:
        """What every branch returns (``features``, ``logits`` or ``probs``)."""
        return str(self._meta.get("us3l.outputs", "features"))

    @property
    def checkpoint_hash(self) -> str | None:
        return self._meta.get("us3l.checkpoint_sha256")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(json.loads(self._meta["@input_shape"]))

    def key(self) -> str:
        """Identity of the source: the file's hash."""
        return "switchable:" + self._sha

    @functools.cached_property
    def _sha(self) -> str:
        return sha256_file(self.path)

    def width_info(self) -> dict[str, Any]:
        """``{"lo", "hi", "ladder", "hash", "classifier", "states"}`` as :meth:`ModelSource.width_info`:
        the held widths (no PyTorch states: the file is what is timed)."""
        from us3l.exporters.switchable import held_widths

        held = held_widths(self.table)
        return {"lo": held[0], "hi": held[-1], "ladder": held, "hash": self.checkpoint_hash,
                "classifier": self.outputs in ("logits", "probs"), "states": {}, "has_dataset": False}

    def widths(self, text: str | None) -> list[float]:
        """The widths to measure: all held ones, or those asked for (each must be held).

        Raises:
            ConfigError: a width the file does not hold (one line listing the held ones).
        """
        from us3l.core.width import parse_widths
        from us3l.exporters.switchable import held_widths, index_for

        held = held_widths(self.table)
        if not text:
            return held
        lo, hi = 0.0, 1.0
        wanted = parse_widths(text, lo, hi)
        for w in wanted:
            index_for(self.table, w, self.path.name)
        return wanted


def switchable_artifacts(source: SwitchableSource, widths: Sequence[float], precision: Precision, direct: bool,
                         out_dir: Path) -> list[BenchArtifact]:
    """One :class:`BenchArtifact` per distinct index among ``widths``.

    Args:
        direct: the runner runs the switchable file (ONNX Runtime here) and feeds ``width_index``;
            else each width is fixed out of the file into ``out_dir/artifacts``.
        precision: the precision measured; the file's own precision when ``direct``.

    Raises:
        ConfigError: a width the file does not hold; a precision the file is not in (``direct``).
    """
    import onnx

    from us3l.exporters.switchable import fix_width, index_for

    if direct and precision is not source.precision:
        raise ConfigError(f"{source.path.name} is a {source.precision} switchable file; ONNX Runtime measures it at "
                          f"{source.precision} (export another with --switchable --precision {precision}, or build "
                          f"{precision} engines from it with --runner trtexec)")
    table = source.table
    chosen: dict[int, list[float]] = {}
    for w in widths:
        chosen.setdefault(index_for(table, w, source.path.name), []).append(round_width(w))
    arts = []
    model = None
    for index, ws in chosen.items():
        row = table[index]
        width = round_width(float(row["width"])) if round_width(float(row["width"])) in ws else ws[0]
        aliases = tuple(a for a in ws if a != width)
        if direct:
            path, sha, width_index = source.path, f"{source._sha}#{index}", index
        else:
            folder = Path(out_dir) / "artifacts"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{source.path.stem}.{source._sha[:12]}.w{format_width(float(row['width']))}.onnx"
            if not path.is_file():
                if model is None:
                    model = onnx.load(str(source.path))
                fixed = fix_width(model, index)
                tmp = path.with_name(path.name + ".tmp")
                onnx.save_model(fixed, str(tmp))
                tmp.replace(path)
                log.info("fixed width %s out of %s -> %s", format_width(float(row["width"])), source.path.name, path.name)
            sha, width_index = sha256_file(path), None
        arts.append(BenchArtifact(width=width, path=path, sha256=sha, input_shape=source.input_shape,
                                  channels=row.get("channels"), macs=row.get("macs"), params=row.get("params"),
                                  aliases=aliases, precision=str(precision), outputs=source.outputs,
                                  width_index=width_index))
    return arts
