"""Artifacts, sidecars, the cache check and all-or-nothing writes.

Each artifact ``NAME_w0.35.onnx`` has a sidecar ``NAME_w0.35.json`` (same stem) holding its
provenance. A command stages every file in a temporary directory on the same file system and
renames them into the output directory only after every width passed its parity gate; on any
failure the staging directory is removed, so the output directory is left as it was (and is not
created if it did not exist).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from us3l.core.errors import ExportError

from .source import file_digest

SIDECAR_SCHEMA = "us3l-export/1"


def artifact_stem(base: str, width: float, snap: int, batch: int | None, fmt: str, precision: str) -> str:
    """File stem of an artifact: ``NAME_w0.35`` (+ ``_s16`` snap, ``_b4`` fixed batch, ``_trt_fp16`` format)."""
    from us3l.core.width import format_width

    stem = f"{base}_w{format_width(width)}"
    if snap != 8:
        stem += f"_s{snap}"
    if batch:
        stem += f"_b{batch}"
    if fmt != "onnx" or precision != "fp32":
        stem += f"_{fmt}" + (f"_{precision}" if fmt == "trt" or precision != "fp32" else "")
    return stem


def tool_versions() -> dict[str, str]:
    """Versions recorded in sidecars (tool, torch, python, onnx, onnxruntime, onnxsim when importable)."""
    import torch

    from us3l.core import __version__

    out = {"us3l": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("onnx", "onnxruntime", "onnxsim"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out


def jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """The value as it reads back from JSON (tuples become lists), so cache keys compare equal."""
    return json.loads(json.dumps(data))


@dataclass(frozen=True)
class Artifact:
    """One exported file and what it contains.

    Attributes:
        path / sidecar: the artifact and its JSON sidecar.
        width: the width it was exported at; aliases: other requested widths with identical channels.
        format / precision: e.g. ``onnx`` / ``fp32``.
        channels: active output channels per slimmable layer.
        macs / params: per-image multiply-accumulates and parameter count of the static network.
        feature_dim: output dimension (or number of classes with a head).
        input_shape: ``[batch, C, H, W]`` (``batch`` is the string ``"batch"`` when dynamic).
        parity: the parity record (see :mod:`us3l.export.parity`).
        sha256: hash of the artifact file.
        cached: reused from a previous identical run.
        untrained: built from an untrained network (latency planning only).
        source: the FP32 ONNX artifact an engine or a reduced-precision ONNX was built from, else None.
        calibration: INT8 calibration record (method, images used, data, ranges file), else None.
    """

    path: Path
    sidecar: Path
    width: float
    aliases: tuple[float, ...]
    format: str
    precision: str
    channels: dict[str, int]
    macs: int
    params: int
    feature_dim: int
    input_shape: tuple[int | str, ...]
    parity: dict[str, Any]
    sha256: str
    cached: bool = False
    untrained: bool = False
    source: Path | None = None
    calibration: dict[str, Any] | None = None

    @classmethod
    def from_sidecar(cls, sidecar: Path, data: dict[str, Any], cached: bool) -> Artifact:
        src = data.get("source_onnx")
        return cls(path=sidecar.parent / data["artifact"], sidecar=sidecar, width=float(data["width"]),
                   aliases=tuple(float(a) for a in data.get("aliases", [])), format=data["format"],
                   precision=data["precision"], channels=dict(data["channels"]), macs=int(data["macs"]),
                   params=int(data["params"]), feature_dim=int(data["feature_dim"]),
                   input_shape=tuple(data["input"]["shape"]), parity=dict(data["parity"]), sha256=data["sha256"],
                   cached=cached, untrained=bool(data.get("untrained")),
                   source=sidecar.parent / src if src else None, calibration=data.get("calibration"))


@dataclass
class ExportResult:
    """What :func:`us3l.export.export` produced."""

    artifacts: list[Artifact] = field(default_factory=list)
    out_dir: Path | None = None
    seconds: float = 0.0

    def for_width(self, width: float) -> Artifact:
        """The artifact serving ``width`` (directly or as an alias).

        Raises:
            KeyError: no artifact covers ``width``.
        """
        for a in self.artifacts:
            if abs(a.width - width) < 1e-9 or any(abs(x - width) < 1e-9 for x in a.aliases):
                return a
        raise KeyError(width)

    @property
    def num_cached(self) -> int:
        return sum(a.cached for a in self.artifacts)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's content, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SIDECAR_SCHEMA else None


def cached_artifact(artifact: Path, sidecar: Path, key: dict[str, Any], force: bool) -> dict[str, Any] | None:
    """The existing sidecar when it records ``key`` and ``artifact``'s hash still matches it.

    Returns None when the artifact must be (re)built: nothing there, a stale sidecar without its
    file, or ``force``.

    Raises:
        ExportError: a different file already sits at ``artifact`` and ``force`` is off.
    """
    data = read_sidecar(sidecar)
    if data and data.get("artifact") == artifact.name and data.get("cache_key") == key and artifact.is_file() \
            and file_digest(artifact) == data.get("sha256"):
        return None if force else data
    if not force and artifact.exists():
        raise ExportError(f"{artifact} already exists and was built from something else (or changed since); "
                          f"pass --force to overwrite or choose another --out")
    return None


class Staging:
    """Stage files in a temporary directory, then move them into ``out_dir`` together.

    Raises:
        ExportError: ``out_dir`` (or its nearest existing parent) is not a writable directory.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ExportError(f"output {self.out_dir} exists and is not a directory")
        anchor = self.out_dir
        while not anchor.exists():
            anchor = anchor.parent
        if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
            raise ExportError(f"cannot write to {self.out_dir}: {anchor} is not a writable directory")
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=".us3l-export-", dir=anchor))
        except OSError as exc:
            raise ExportError(f"cannot write to {self.out_dir}: {exc.strerror}") from None
        self._moves: list[tuple[Path, Path]] = []

    def path(self, name: str) -> Path:
        """A staging path whose file will land at ``out_dir / name`` on commit."""
        staged = self.dir / name
        self._moves.append((staged, self.out_dir / name))
        return staged

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Stage a JSON file (sidecars are staged after their artifact so they land last)."""
        staged = self.path(name)
        staged.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return staged

    def commit(self) -> None:
        """Create ``out_dir`` if needed and rename every staged file into it."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for staged, final in self._moves:
                if staged.exists():
                    os.replace(staged, final)
        except OSError as exc:
            raise ExportError(f"cannot write to {self.out_dir}: {exc.strerror}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staging directory and everything in it."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()
