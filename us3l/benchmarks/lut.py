"""The cached latency lookup table.

One JSON file (``<out>/lut.json``, or ``~/.cache/us3l/lut.json`` when no output dir is given)
holding measured points keyed by (device fingerprint, runner, artifact sha256, batch, precision,
threads), plus the exported artifacts per (source, width, snap, precision) so a cached run needs
neither an export nor a measurement. A point is reused unless ``--force``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

from us3l.core.files import atomic_write_text, relative_path
from us3l.core.width import format_width

log = logging.getLogger(__name__)
LUT_VERSION = 1
_PATH_KEYS = ("path", "source")  # artifact-record fields that name files


def default_cache_path() -> Path:
    """``$XDG_CACHE_HOME/us3l/lut.json`` (default ``~/.cache/us3l/lut.json``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "us3l" / "lut.json"


def point_key(fingerprint: str, runner: str, sha256: str, batch: int, precision: str, threads: int | None) -> str:
    """The lookup key of one measured point."""
    return "|".join([fingerprint, runner, sha256, str(int(batch)), precision, str(threads or 0)])


class LatencyTable:
    """Load-modify-save view of the lookup-table file.

    Examples:
        >>> # table = LatencyTable(Path("out/lut.json")); table.get(key); table.put(key, row); table.save()
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.points: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}
        self.sources: dict[str, dict] = {}  # source key -> {"lo", "hi", "ladder"} (avoids importing torch)
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if data.get("version") == LUT_VERSION:
                    self.points = dict(data.get("points") or {})
                    self.artifacts = dict(data.get("artifacts") or {})
                    self.sources = dict(data.get("sources") or {})
            except (OSError, ValueError, AttributeError) as exc:
                log.warning("ignoring unreadable lookup table %s (%s)", self.path, exc)

    def get(self, key: str) -> dict | None:
        """The cached point for ``key`` or ``None``."""
        return self.points.get(key)

    def put(self, key: str, value: dict) -> None:
        """Store a measured point (timestamped)."""
        self.points[key] = {**value, "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}

    @staticmethod
    def _artifact_key(source_key: str, width: float, snap: int, precision: str, outputs: str = "features") -> str:
        parts = [source_key, format_width(width), str(snap), precision]
        return "|".join(parts if outputs == "features" else [*parts, outputs])  # features: the key before outputs

    def get_artifact(self, source_key: str, width: float, snap: int, precision: str,
                     outputs: str = "features") -> dict | None:
        """A previously exported artifact record (its ``path`` and ``source`` resolved from the table's folder)."""
        rec = self.artifacts.get(self._artifact_key(source_key, width, snap, precision, outputs))
        if rec is None:
            return None
        base = self.path.parent
        return {**rec, **{k: str(base / rec[k]) for k in _PATH_KEYS if rec.get(k)}}  # an absolute one stays as is

    def put_artifact(self, source_key: str, width: float, snap: int, precision: str, record: dict,
                     outputs: str = "features") -> None:
        """Remember an exported artifact record; its paths are stored relative to the table's folder, so
        a table written into an output folder names no absolute path of this machine."""
        base = self.path.parent
        self.artifacts[self._artifact_key(source_key, width, snap, precision, outputs)] = {
            **record, **{k: relative_path(record[k], base) for k in _PATH_KEYS if record.get(k)}}

    def save(self) -> Path:
        """Write the table atomically."""
        data = {"version": LUT_VERSION, "points": self.points, "artifacts": self.artifacts, "sources": self.sources}
        return atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))
