"""The deployment manifest: its format, its JSON Schema and reading it back.

``us3l fleet plan`` writes ``PLAN/manifest.json`` (format :data:`MANIFEST_FORMAT`, described by the
shipped ``fleet-manifest.schema.json``; :func:`schema` returns it); ``us3l fleet check`` reads it
with :func:`read_manifest`. A device that was not planned, or whose check failed, carries its reason
as one line (:func:`one_line`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from us3l.core.errors import ConfigError, US3LError

MANIFEST_FORMAT = "us3l-fleet-manifest/1"
MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = Path(__file__).with_name("fleet-manifest.schema.json")

#: ``fn(done, total, description)``: the per-device progress of :func:`~us3l.fleet.plan.plan_fleet`
#: and :func:`~us3l.fleet.check.check_fleet`.
ProgressFn = Callable[[int, int, str], None]


def schema() -> dict:
    """The manifest's JSON Schema (shipped as ``fleet-manifest.schema.json``)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def read_manifest(path: Path) -> dict:
    """A manifest, checked against the shipped JSON Schema's required fields.

    Raises:
        ConfigError: unreadable, not JSON, or not a fleet manifest.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{path}: not JSON; valid: the manifest.json 'us3l fleet plan' writes") from None
    if not isinstance(data, dict) or not isinstance(data.get("devices"), list):
        raise ConfigError(f"{path}: not a fleet manifest (no \"devices\" list); valid: the manifest.json "
                          "'us3l fleet plan' writes")
    for i, d in enumerate(data["devices"]):
        need = ("device", "planned") + (("width", "precision", "artifact", "runner", "input_shape", "latency_ms",
                                        "budget", "profile") if isinstance(d, dict) and d.get("planned") else ())
        missing = [k for k in need if not isinstance(d, dict) or k not in d]
        if missing:
            raise ConfigError(f"{path}: devices[{i}] lacks {', '.join(missing)}; not a manifest 'us3l fleet plan' wrote")
    return data


def one_line(exc: BaseException) -> str:
    """A failure as the one-line reason a manifest entry or a check record gives."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (US3LError, OSError)) else f"{type(exc).__name__}: {text}"


__all__ = ["MANIFEST_FILE", "MANIFEST_FORMAT", "SCHEMA_FILE", "ProgressFn", "one_line", "read_manifest", "schema"]
