"""Artifacts, sidecars, the cache check and all-or-nothing writes.

Each artifact ``NAME_w0.35.onnx`` has a sidecar ``NAME_w0.35.json`` (same stem) holding its
provenance. A command stages every file in a hidden folder inside the output directory and
renames them into place only after every width passed its parity gate; on any failure the
staging folder is removed, so the output directory is left as it was (and removed again if this
run created it).

Faults (issue 15): one export at a time writes into an output directory. The staging run holds an
exclusive ``flock`` on the directory itself; a second export into it is refused with one line. A
killed run leaves a staging folder, which the next run (holding the lock, so no one else can be
staging) removes. Renaming into place is journalled: ``.us3l-commit.json`` lists the files
being moved and is removed when all are in place, so a run killed between an artifact and its
sidecar is repaired by the next run (the listed files are rebuilt without ``--force``).
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
from us3l.core.files import sha256_file
from us3l.core.precision import Precision

SIDECAR_SCHEMA = "us3l-export/1"
STAGING_PREFIX = ".us3l-export-"
JOURNAL_NAME = ".us3l-commit.json"


def artifact_stem(base: str, width: float, snap: int, batch: int | None, fmt: str, precision: str) -> str:
    """File stem of an artifact: ``NAME_w0.35`` (+ ``_s16`` snap, ``_b4`` fixed batch, ``_trt_fp16`` format)."""
    from us3l.core.width import format_width

    stem = f"{base}_w{format_width(width)}"
    if snap != 8:
        stem += f"_s{snap}"
    if batch:
        stem += f"_b{batch}"
    reduced = Precision.parse(precision).reduced
    if fmt != "onnx" or reduced:
        stem += f"_{fmt}" + (f"_{precision}" if fmt == "trt" or reduced else "")
    return stem


def tool_versions() -> dict[str, str]:
    """Versions recorded in sidecars (tool, torch, python, onnx, onnxruntime, onnxsim when importable)."""
    import torch

    from us3l.core.version import __version__

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
        parity: the parity record (see :mod:`us3l.exporters.parity`).
        sha256: hash of the artifact file.
        cached: reused from a previous identical run.
        untrained: built from an untrained network (latency planning only).
        source: the FP32 ONNX artifact an engine or a reduced-precision ONNX was built from, else None.
        calibration: INT8 calibration record (method, images used, data, ranges file), else None.
        switchable: for a switchable file (every width in one file), its index table
            (``{"index", "width", "aliases", "channels", "macs", ...}`` per width); ``width``,
            ``channels`` and ``macs`` then describe its widest width.
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
    switchable: tuple[dict[str, Any], ...] | None = None  # index table of a switchable file, else None

    @classmethod
    def from_sidecar(cls, sidecar: Path, data: dict[str, Any], cached: bool) -> Artifact:
        src = data.get("source_onnx")
        return cls(path=sidecar.parent / data["artifact"], sidecar=sidecar, width=float(data["width"]),
                   aliases=tuple(float(a) for a in data.get("aliases", [])), format=data["format"],
                   precision=data["precision"], channels=dict(data["channels"]), macs=int(data["macs"]),
                   params=int(data["params"]), feature_dim=int(data["feature_dim"]),
                   input_shape=tuple(data["input"]["shape"]), parity=dict(data["parity"]), sha256=data["sha256"],
                   cached=cached, untrained=bool(data.get("untrained")),
                   source=sidecar.parent / src if src else None, calibration=data.get("calibration"),
                   switchable=tuple((data.get("switchable") or {}).get("index") or ()) or None)


@dataclass
class ExportResult:
    """What :func:`us3l.exporters.run_export` produced."""

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
            for row in a.switchable or ():
                if any(abs(float(x) - width) < 1e-9 for x in [row["width"], *row.get("aliases", [])]):
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


def cached_artifact(artifact: Path, sidecar: Path, key: dict[str, Any], force: bool,
                    repairable: bool = False) -> dict[str, Any] | None:
    """The existing sidecar when it records ``key`` and ``artifact``'s hash still matches it.

    Returns None when the artifact must be (re)built: nothing there, a stale sidecar without its
    file, an interrupted commit of ours (``repairable``), or ``force``.

    Raises:
        ExportError: a different file already sits at ``artifact`` and neither ``force`` nor ``repairable``.
    """
    data = read_sidecar(sidecar)
    if data and data.get("artifact") == artifact.name and data.get("cache_key") == key and artifact.is_file() \
            and sha256_file(artifact) == data.get("sha256"):
        return None if force else data
    if not force and not repairable and artifact.exists():
        raise ExportError(f"{artifact} already exists and was built from something else (or changed since); "
                          f"pass --force to overwrite or choose another --out")
    return None


class Staging:
    """Stage files in a hidden folder of ``out_dir``, then move them into ``out_dir`` together.

    The constructor creates ``out_dir`` (removed again on failure when it created it), takes the
    directory's lock, removes staging folders of killed runs and reads an interrupted commit's
    journal (:attr:`repairable`).

    Raises:
        ExportError: ``out_dir`` (or its nearest existing parent) is not a writable directory, or
            another export holds its lock.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ExportError(f"output {self.out_dir} exists and is not a directory")
        anchor, missing = self.out_dir, []
        while not anchor.exists():
            missing.append(anchor)
            anchor = anchor.parent
        if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
            raise ExportError(f"cannot write to {self.out_dir}: {anchor} is not a writable directory")
        self._created: list[Path] = []
        self._lock: int | None = None
        self._committed = False
        try:
            for d in reversed(missing):
                try:
                    d.mkdir()
                    self._created.append(d)
                except FileExistsError:
                    pass
            self._lock = _lock_dir(self.out_dir)
            for entry in self.out_dir.iterdir():  # we hold the lock: any staging folder here is a killed run's
                if entry.name.startswith(STAGING_PREFIX) and entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
            self.repairable = _read_journal(self.out_dir / JOURNAL_NAME)
            self.dir = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.out_dir))
        except OSError as exc:
            self._release(remove_created=True)
            raise ExportError(f"cannot write to {self.out_dir}: {exc.strerror}") from None
        except BaseException:
            self._release(remove_created=True)
            raise
        self._moves: list[tuple[Path, Path]] = []
        self.settled: set[str] = set()  # files this run found in place and verified (cache hits)

    def path(self, name: str) -> Path:
        """A staging path whose file will land at ``out_dir / name`` on commit."""
        staged = self.dir / name
        self._moves.append((staged, self.out_dir / name))
        return staged

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        """Stage a JSON file (sidecars are staged after their artifact so they land last)."""
        from us3l.core.files import atomic_write_text

        staged = self.path(name)
        atomic_write_text(staged, json.dumps(data, indent=2, sort_keys=True) + "\n")
        return staged

    def commit(self) -> None:
        """Rename every staged file into ``out_dir``, journalled so that an interrupted commit is repaired."""
        from us3l.core.files import atomic_write_json

        journal = self.out_dir / JOURNAL_NAME
        names = [final.name for staged, final in self._moves if staged.exists()]
        try:
            if names:
                atomic_write_json(journal, {"files": sorted(set(names) | self.repairable)})
            for staged, final in self._moves:
                if staged.exists():
                    os.replace(staged, final)
            leftover = sorted(n for n in self.repairable - set(names) - self.settled if (self.out_dir / n).exists())
            if leftover:  # files of an earlier interrupted commit this run did not rebuild
                atomic_write_json(journal, {"files": leftover})
            else:
                journal.unlink(missing_ok=True)
            self._committed = True
        except OSError as exc:
            raise ExportError(f"cannot write to {self.out_dir}: {exc.strerror}") from None
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staging folder, release the lock, and remove ``out_dir`` if this run created it
        and nothing was committed."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self._release(remove_created=not self._committed)

    def _release(self, remove_created: bool) -> None:
        if remove_created:
            for d in reversed(self._created):  # deepest first; only while empty
                try:
                    d.rmdir()
                except OSError:
                    break
            self._created = []
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = None

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _lock_dir(path: Path) -> int | None:
    """An exclusive, non-blocking ``flock`` on the directory itself (released when the descriptor
    closes, also when the process is killed).

    Raises:
        ExportError: another process holds it.
    """
    import errno
    import fcntl

    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise ExportError(f"another us3l export (or bench) is writing into {path} right now; wait for it to finish "
                              "or choose another --out") from None
        return None  # a file system without flock (some network mounts): proceed unlocked
    return fd


def _read_journal(path: Path) -> set[str]:
    """Names listed by an interrupted commit's journal (empty when there is none or it is unreadable)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    files = data.get("files") if isinstance(data, dict) else None
    return {f for f in files if isinstance(f, str) and "/" not in f and f not in ("", ".", "..")} if isinstance(files, list) else set()
