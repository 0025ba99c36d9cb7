"""The fleet file ``FLEET.toml``: its keys, their types and values, parsed into a :class:`FleetSpec`.

:func:`load_fleet` reads ``FLEET.toml`` (the model, the widths, the timing methodology and one
``[devices.NAME]`` table per deployed device: a device profile, its budget, precisions, minimum
accuracy) and refuses an unknown key, a wrong type or a bad value in one line that names the file,
the line and what is valid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError, US3LError
from us3l.core.precision import PRECISIONS, SWITCHABLE_PRECISIONS as SWITCHABLE
from us3l.core.width import parse_widths

from us3l.benchmarks.stats import METRICS

#: Top-level keys of FLEET.toml and their types.
FLEET_KEYS: dict[str, tuple[type, ...]] = {
    "checkpoint": (str,), "arch": (str,), "widths": (str, list), "devices_file": (str,), "outputs": (str,),
    "snap": (int,), "measure_accuracy": (bool,), "accept_new_host_key": (bool,), "timing": (dict,),
    "devices": (dict,),
}
#: ``[timing]``: the methodology every device is measured with (``us3l bench``'s options).
TIMING_KEYS: dict[str, tuple[type, ...]] = {
    "duration_s": (int, float), "iterations": (int,), "warmup_ms": (int, float), "rounds": (int,),
    "remeasure": (int,), "max_cov": (int, float), "max_tail": (int, float),
}
#: ``[devices.NAME]``: one deployed device.
DEVICE_KEYS: dict[str, tuple[type, ...]] = {
    "device": (str,), "budget_ms": (int, float), "percentile": (str,), "batch": (int,), "precisions": (list,),
    "min_accuracy": (int, float), "switchable": (bool,), "threads": (int,), "runner": (str,), "deploy_path": (str,),
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class FleetDevice:
    """One ``[devices.NAME]`` table of FLEET.toml.

    Attributes:
        name: the table's name (the manifest's ``device``). device: the device profile it runs on (a
            built-in ``cpu``/``cuda``/``jetson`` or a profile of the devices file; default ``name``).
        budget_ms / percentile / batch: the latency budget, the statistic it bounds, the batch size.
        precisions: precisions allowed (``()``: the profile's). min_accuracy: the chosen pair must reach
            it (``None``: no floor). switchable: deploy the plan's switchable file (every width in one
            file, chosen by ``width_index``), measured as ``us3l bench FILE_switchable.onnx``.
        threads / runner: override the profile's.
        deploy_path: where the chosen file is deployed on that device (an absolute path there; a
            path on this machine for a local profile); ``fleet check`` hashes and measures that file.
    """

    name: str
    device: str
    budget_ms: float
    percentile: str = "p95"
    batch: int = 1
    precisions: tuple[str, ...] = ()
    min_accuracy: float | None = None
    switchable: bool = False
    threads: int | None = None
    runner: str | None = None
    deploy_path: str | None = None


def is_deploy_path(value: object) -> bool:
    """``value`` can name a deployed file: an absolute POSIX path (the device's file system), not a folder."""
    return (isinstance(value, str) and value.startswith("/") and not value.endswith("/")
            and not any(c in value for c in "\0\n\r"))


DEPLOY_PATH_VALID = 'the absolute path of the deployed file on that device, e.g. "/opt/app/model.onnx"'


@dataclass(frozen=True)
class FleetSpec:
    """FLEET.toml, parsed and checked (paths resolved against the file's folder).

    Attributes:
        path: the file. checkpoint / arch: the model (a checkpoint or packed model directory, or an
            untrained architecture for latency planning). widths: width list or range text.
        devices_file: device profiles (``None``: the user's ``~/.config/us3l/devices.toml``).
        outputs / snap / measure_accuracy / accept_new_host_key: as ``us3l bench``.
        timing: ``[timing]`` values (``us3l bench``'s defaults for the rest). devices: the devices.
    """

    path: Path
    checkpoint: Path | None = None
    arch: str | None = None
    widths: str | None = None
    devices_file: Path | None = None
    outputs: str | None = None
    snap: int = 8
    measure_accuracy: bool = False
    accept_new_host_key: bool = False
    timing: dict[str, Any] = field(default_factory=dict)
    devices: tuple[FleetDevice, ...] = ()


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
             dict: "a table"}
    return " or ".join(names[t] for t in types if not (t is int and float in types))


def _check_keys(path: Path, text: str, table: str | None, entries: dict, valid: dict[str, tuple[type, ...]]) -> None:
    """Unknown keys and wrong types: one line with the file, the line and the valid keys."""
    from us3l.benchmarks.devices import _line_of, _top_level_line

    where = f"[{table}]" if table else "the top level"
    for key, value in entries.items():
        line = _line_of(text, table, key) if table else _top_level_line(text, key)
        if key not in valid:
            raise ConfigError(f"{path}:{line}: unknown key {key!r} in {where}; valid: {', '.join(valid)}")
        types = valid[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            raise ConfigError(f"{path}:{line}: key {key!r} in {where} must be {_type_name(types)}, got {value!r}")


def load_fleet(path: Path) -> FleetSpec:
    """Parse and check FLEET.toml.

    Raises:
        ConfigError: unreadable file, invalid TOML, an unknown key or a wrong type (file, line and the
            valid keys), no devices, a bad value (budget, percentile, precision, batch, name).
    """
    from us3l.benchmarks.devices import _line_of, _top_level_line, read_toml_file

    path = Path(path)
    text, data = read_toml_file(path, "fleet file")
    _check_keys(path, text, None, data, FLEET_KEYS)
    base = path.parent
    if ("checkpoint" in data) == ("arch" in data):
        raise ConfigError(f"{path}: give exactly one of checkpoint = \"FILE\" or arch = \"NAME\" (an untrained "
                          "architecture plans latency only)")
    timing = dict(data.get("timing") or {})
    _check_keys(path, text, "timing", timing, TIMING_KEYS)
    devices_table = data.get("devices") or {}
    if not devices_table:
        raise ConfigError(f"{path}: no devices; add one [devices.NAME] table per device with budget_ms = ...")
    devices = []
    for name, entries in devices_table.items():
        table = f"devices.{name}"
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}:{_line_of(text, 'devices', name)}: 'devices.{name}' must be a table")
        _check_keys(path, text, table, entries, DEVICE_KEYS)

        def fail(key: str | None, message: str, _table: str = table) -> None:
            raise ConfigError(f"{path}:{_line_of(text, _table, key)}: {message}")

        if not _NAME.match(name):
            fail(None, f"device name {name!r} is invalid; valid: letters, digits, '_', '.', '-'")
        if "budget_ms" not in entries:
            fail(None, f"[{table}] has no budget_ms; valid: a latency budget in milliseconds, e.g. budget_ms = 5")
        budget = float(entries["budget_ms"])
        if not budget > 0 or budget != budget or budget == float("inf"):
            fail("budget_ms", f"budget_ms {entries['budget_ms']!r} in [{table}] is invalid; valid: a number > 0")
        percentile = entries.get("percentile", "p95")
        if percentile not in METRICS:
            fail("percentile", f"percentile {percentile!r} in [{table}] is invalid; valid: {', '.join(METRICS)}")
        batch = entries.get("batch", 1)
        if batch < 1:
            fail("batch", f"batch {batch} in [{table}] is invalid; valid: an integer >= 1")
        precisions = entries.get("precisions", [])
        for p in precisions:
            if p not in PRECISIONS:
                fail("precisions", f"precision {p!r} in [{table}] is invalid; valid: {', '.join(PRECISIONS)}")
        min_acc = entries.get("min_accuracy")
        if min_acc is not None and not 0 <= float(min_acc) <= 1:
            fail("min_accuracy", f"min_accuracy {min_acc!r} in [{table}] is invalid; valid: a fraction in [0, 1]")
        if entries.get("switchable") and (len(precisions) > 1 or any(p not in SWITCHABLE for p in precisions)):
            fail("switchable", f"switchable = true in [{table}] needs one precision, {' or '.join(SWITCHABLE)} (a switchable "
                               f"file holds every width at one precision); got precisions = {precisions}")
        threads = entries.get("threads")
        if threads is not None and threads < 0:
            fail("threads", f"threads {threads} in [{table}] is invalid; valid: an integer >= 0 (0 = auto)")
        deploy_path = entries.get("deploy_path")
        if deploy_path is not None and not is_deploy_path(deploy_path):
            fail("deploy_path", f"deploy_path {deploy_path!r} in [{table}] is invalid; valid: {DEPLOY_PATH_VALID}")
        devices.append(FleetDevice(name=name, device=entries.get("device", name), budget_ms=budget,
                                   percentile=percentile, batch=int(batch), precisions=tuple(dict.fromkeys(precisions)),
                                   min_accuracy=None if min_acc is None else float(min_acc),
                                   switchable=bool(entries.get("switchable", False)), threads=threads,
                                   runner=entries.get("runner"), deploy_path=deploy_path))
    widths = data.get("widths")
    if isinstance(widths, list):
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in widths):
            raise ConfigError(f"{path}:{_top_level_line(text, 'widths')}: widths must be numbers or a text like "
                              "'0.25:1.0:0.25'")
        widths = ",".join(repr(float(w)) for w in widths)
    if widths is not None:
        try:
            parse_widths(widths, 0.0, 1.0)
        except US3LError as exc:
            raise ConfigError(f"{path}:{_top_level_line(text, 'widths')}: {exc}") from None
    devices_file = data.get("devices_file")
    spec = FleetSpec(
        path=path, checkpoint=(base / data["checkpoint"]) if "checkpoint" in data else None, arch=data.get("arch"),
        widths=widths, devices_file=(base / Path(devices_file).expanduser()) if devices_file else None,
        outputs=data.get("outputs"), snap=int(data.get("snap", 8)),
        measure_accuracy=bool(data.get("measure_accuracy", False)),
        accept_new_host_key=bool(data.get("accept_new_host_key", False)), timing=timing, devices=tuple(devices))
    if spec.checkpoint is not None and not spec.checkpoint.exists():
        raise ConfigError(f"{path}:{_top_level_line(text, 'checkpoint')}: checkpoint {data['checkpoint']!r} not found "
                          f"(paths are relative to the fleet file's folder)")
    if spec.devices_file is not None and not spec.devices_file.is_file():
        raise ConfigError(f"{path}:{_top_level_line(text, 'devices_file')}: devices file {devices_file!r} not found "
                          f"(paths are relative to the fleet file's folder)")
    return spec


__all__ = ["DEPLOY_PATH_VALID", "DEVICE_KEYS", "FLEET_KEYS", "TIMING_KEYS", "FleetDevice", "FleetSpec", "is_deploy_path",
           "load_fleet"]
