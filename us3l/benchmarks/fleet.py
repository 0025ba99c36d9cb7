"""``us3l fleet``: one file of devices and budgets -> one deployment manifest, checked later.

:func:`load_fleet` reads ``FLEET.toml`` (the model, the widths, the timing methodology and one
``[devices.NAME]`` table per deployed device: a device profile, its budget, precisions, minimum
accuracy). :func:`plan_fleet` runs, for each device in turn, the very :class:`~us3l.benchmarks.run.BenchRun`
that ``us3l bench --budget-ms`` runs (export or reuse, time through the lookup table, stability
and noise rules, :func:`~us3l.benchmarks.choice.choose`), with one shared export folder and one
shared lookup table, so each artifact is exported once and a re-plan measures only what is new.
It then writes the plan folder::

    PLAN/manifest.json            the deployment manifest (fleet-manifest.schema.json)
    PLAN/fleet.csv                one row per device
    PLAN/fleet.png                every device's accuracy-latency front, budget line, chosen point
    PLAN/artifacts/<sha16>/FILE   a copy of every artifact the manifest names (+ its sidecar)
    PLAN/bench/                   the shared exports, lut.json and each device's report.json

A device that cannot be reached, or whose measurement fails, is kept in the manifest with
``planned: false`` and the reason; the others are planned as usual. The manifest, the CSV and the
picture are written only when every device has been tried (temp file + rename), so Ctrl-C leaves
the previous manifest (or none), while the lookup table keeps what was measured.

:func:`check_fleet` re-measures each planned device's artifact with the plan's methodology,
verifies its sha256 on the device (after the upload, over ssh for a remote device) and compares
the p50 with the manifest's. A device with a ``deploy_path`` (the fleet file's, or ``--deployed``)
has that very file hashed and measured on it, in place, rather than an uploaded plan copy.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError, RemoteError, US3LError
from us3l.core.files import atomic_write_bytes, atomic_write_json, atomic_write_text, check_writable_dir, sha256_file
from us3l.core.heartbeat import stage
from us3l.core.precision import PRECISIONS, SWITCHABLE_PRECISIONS as SWITCHABLE, Precision
from us3l.core.width import format_width, parse_widths

from .stats import METRICS

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "us3l-fleet-manifest/1"
MANIFEST_FILE = "manifest.json"
SCHEMA_FILE = Path(__file__).with_name("fleet-manifest.schema.json")
#: ``fleet check`` statuses, in the order a line reports them; every one but OK and SKIPPED fails the check.
CHECK_STATUSES = ("OK", "DRIFT", "HASH", "UNREACHABLE", "ERROR", "SKIPPED")
DEFAULT_THRESHOLD_PCT = 10.0

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

#: ``fn(checkpoint, artifact files, PyTorch widths, accuracy table)`` (the API passes the trainer's evaluator)
AccuracyMeasurer = Callable[[Path, list[Path], list[float], Path], None]
ProgressFn = Callable[[int, int, str], None]


# ----------------------------------------------------------------------------------- the fleet file

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
    from .devices import _line_of, _top_level_line

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
    import tomllib

    from .devices import _line_of, _top_level_line

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the fleet file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; valid: a TOML fleet file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
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


# ------------------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class FleetConfig:
    """Everything ``us3l fleet plan`` needs.

    Attributes:
        fleet_file: FLEET.toml. out_dir: the plan folder (created; a later plan refreshes it).
        force: re-export and re-measure what the lookup table holds. plot: write ``fleet.png``.
    """

    fleet_file: Path
    out_dir: Path = Path("plan")
    force: bool = False
    plot: bool = True


@dataclass
class FleetPlan:
    """What :func:`plan_fleet` produced: the manifest dict and the files written."""

    manifest: dict
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[dict]:
        """The devices not planned (unreachable, failed, or no pair within the budget)."""
        return [d for d in self.manifest["devices"] if not d["planned"]]


def bench_config(spec: FleetSpec, dev: FleetDevice, bench_dir: Path, force: bool = False,
                 switchable: Path | None = None) -> Any:
    """The :class:`~us3l.benchmarks.config.BenchConfig` that ``us3l bench --budget-ms`` would run for
    ``dev`` alone, with the plan's shared export folder and lookup table (``bench_dir``); for a
    ``switchable`` device, ``us3l bench FILE_switchable.onnx --budget-ms`` on the plan's switchable file.

    Raises:
        ConfigError: a value ``us3l bench`` refuses.
    """
    from .config import BenchConfig

    t = spec.timing
    if dev.switchable:  # the file holds the model, its widths, precision and outputs
        return BenchConfig(
            artifact=switchable or bench_dir / "switchable" / "model_switchable.onnx", device=dev.device,
            devices_file=spec.devices_file, widths=spec.widths, batches=(dev.batch,), runner=dev.runner,
            precision=",".join(dev.precisions) if dev.precisions else None, threads=dev.threads,
            duration_s=float(t.get("duration_s", 1.0)), iterations=t.get("iterations"),
            warmup_ms=float(t.get("warmup_ms", 200.0)), rounds=int(t.get("rounds", 5)),
            remeasure=int(t.get("remeasure", 2)), max_cov=float(t.get("max_cov", 0.5)),
            max_tail=float(t.get("max_tail", 2.0)), budget_ms=dev.budget_ms, metric=dev.percentile,
            accept_new_host_key=spec.accept_new_host_key, force=force, out_dir=bench_dir, plot=False,
            accuracy=(switchable.with_name("accuracy.json") if switchable is not None
                      and switchable.with_name("accuracy.json").is_file() else None))
    return BenchConfig(
        checkpoint=spec.checkpoint, arch=spec.arch, device=dev.device, devices_file=spec.devices_file,
        widths=spec.widths, batches=(dev.batch,), runner=dev.runner,
        precision=",".join(dev.precisions) if dev.precisions else None, threads=dev.threads,
        duration_s=float(t.get("duration_s", 1.0)), iterations=t.get("iterations"),
        warmup_ms=float(t.get("warmup_ms", 200.0)), rounds=int(t.get("rounds", 5)),
        remeasure=int(t.get("remeasure", 2)), max_cov=float(t.get("max_cov", 0.5)),
        max_tail=float(t.get("max_tail", 2.0)), budget_ms=dev.budget_ms, metric=dev.percentile,
        accept_new_host_key=spec.accept_new_host_key, force=force, out_dir=bench_dir, snap=spec.snap, plot=False,
        outputs=spec.outputs, measure_accuracy=spec.measure_accuracy)


def _check_device(spec: FleetSpec, dev: FleetDevice) -> None:
    """What can be refused before anything is measured: the profile exists, the runner suits it."""
    from .devices import get_device
    from .run import resolve_runner

    try:
        profile = get_device(dev.device, spec.devices_file)
        runner = resolve_runner(dev.runner or profile.runner, profile)
    except US3LError as exc:
        raise type(exc)(f"{spec.path}: [devices.{dev.name}]: {exc}") from None
    reduced = [p for p in dev.precisions if Precision.parse(p).reduced]
    if runner == "onnxruntime-agent" and reduced:
        raise ConfigError(f"{spec.path}: [devices.{dev.name}]: the remote onnxruntime agent measures fp32 ONNX; "
                          f"precisions {', '.join(reduced)} need runner = \"trtexec\" on that device")


def plan_fleet(cfg: FleetConfig, progress: ProgressFn | None = None,
               measure_accuracy: AccuracyMeasurer | None = None) -> FleetPlan:
    """Plan every device of the fleet file and write the plan folder.

    Args:
        cfg: the frozen configuration.
        progress: ``fn(done, total, description)`` per device (each device's stages, exporting and
            timing, report through :mod:`us3l.core.heartbeat`).
        measure_accuracy: the evaluator ``us3l bench --measure-accuracy`` uses (the API passes it).

    Returns:
        :class:`FleetPlan`; devices not planned are in the manifest with their reason.

    Raises:
        ConfigError / UnknownNameError: bad fleet file or device (before anything is measured).
    """
    spec = load_fleet(cfg.fleet_file)
    out = Path(cfg.out_dir)
    check_writable_dir(out)
    bench_dir = out / "bench"
    configs = {}
    for dev in spec.devices:  # everything a user can get wrong fails here, before any work
        try:
            configs[dev.name] = bench_config(spec, dev, bench_dir, cfg.force)
        except US3LError as exc:
            raise type(exc)(f"{spec.path}: [devices.{dev.name}]: {exc}") from None
        _check_device(spec, dev)
    entries: list[dict] = []
    fronts: dict[str, list[dict]] = {}
    switchable: dict[str, Path | str] = {}  # precision -> the plan's switchable file (or why it failed)
    for dev in spec.devices:
        precision = (dev.precisions or ("fp32",))[0]
        if dev.switchable and precision not in switchable:
            try:
                switchable[precision] = made = export_switchable(spec, precision, bench_dir, cfg.force)
                if spec.measure_accuracy and spec.checkpoint is not None and measure_accuracy is not None:
                    _switchable_accuracy(spec.checkpoint, made, measure_accuracy)
            except Exception as exc:  # the devices that need it are not planned; the others are
                switchable[precision] = _one_line(exc)
    total = len(spec.devices)
    with stage("planning devices", total=total, unit="devices") as current:
        for i, dev in enumerate(spec.devices):
            if progress:
                progress(i, total, f"device {dev.name}")
            bcfg = configs[dev.name]
            if dev.switchable:
                file = switchable[(dev.precisions or ("fp32",))[0]]
                if isinstance(file, str):
                    entries.append(_failed(dev, f"the switchable export failed: {file}"))
                    fronts[dev.name] = []
                    current.update(i + 1)
                    continue
                bcfg = bench_config(spec, dev, bench_dir, cfg.force, file)
            entry, rows = _plan_device(spec, dev, bcfg, out, measure_accuracy)
            entries.append(entry)
            fronts[dev.name] = rows
            current.update(i + 1)
    if progress:
        progress(total, total, "writing the manifest")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": _source_record(spec, out),
        "timing": _timing_record(spec),
        "devices": entries,
    }
    _mark_shared(entries)
    paths = {"manifest": out / MANIFEST_FILE}
    paths["csv"] = write_fleet_csv(out / "fleet.csv", entries)
    if cfg.plot:
        paths["plot"] = write_fleet_plot(out / "fleet.png", entries, fronts)
    atomic_write_json(paths["manifest"], manifest)  # last: a manifest names files that exist
    return FleetPlan(manifest=manifest, paths=paths)


def _switchable_accuracy(checkpoint: Path, file: Path, measure_accuracy: AccuracyMeasurer) -> None:
    """``measure_accuracy = true``: the switchable file's accuracy at every index it holds, measured on
    the file itself into ``accuracy.json`` beside it (bench joins it by sha256 and ``width_index``)."""
    table = file.with_name("accuracy.json")
    sha = sha256_file(file)
    if table.is_file() and sha in table.read_text(encoding="utf-8"):
        return
    measure_accuracy(checkpoint, [file], [], table)


def _failed(dev: FleetDevice, reason: str) -> dict:
    return {"device": dev.name, "profile": dev.device,
            "budget": {"ms": dev.budget_ms, "percentile": dev.percentile, "batch": dev.batch,
                       "min_accuracy": dev.min_accuracy}, "planned": False, "reason": reason}


def export_switchable(spec: FleetSpec, precision: str, bench_dir: Path, force: bool = False) -> Path:
    """The plan's switchable file at ``precision`` (``us3l export --switchable`` of the fleet's model
    and widths into ``bench_dir/switchable``; an identical earlier export is reused by the exporter).

    Raises:
        ExportError / ConfigError: the export failed or was refused.
    """
    from us3l.exporters import ExportConfig, run_export

    from .artifacts import ModelSource

    outputs = spec.outputs
    if outputs is None:
        outputs = "logits" if ModelSource(spec.checkpoint, spec.arch).width_info().get("classifier") else "features"
    extra: dict[str, Any] = {}
    if spec.arch is not None:  # untrained: latency planning, the statistics steps kept small (as bench does)
        known = {f.name for f in dataclasses.fields(ExportConfig)}
        extra = {k: v for k, v in (("bn_images", 32), ("parity_images", 2), ("gate_images", 8)) if k in known}
    widths = tuple(parse_widths(spec.widths or "0.25:1.0:0.25", 0.0, 1.0))
    cfg = ExportConfig(checkpoint=str(spec.checkpoint) if spec.checkpoint else None, arch=spec.arch, widths=widths,
                       format="onnx", out_dir=str(bench_dir / "switchable" / precision), batch=None, snap=spec.snap,
                       precision=precision, outputs=outputs, switchable=True, force=force, **extra)
    with stage("exporting the switchable file"):
        result = run_export(cfg)
    return Path(result.artifacts[0].path).resolve()


def _source_record(spec: FleetSpec, out: Path) -> dict[str, Any]:
    from us3l.core.files import relative_path

    return {"fleet_file": spec.path.name, "checkpoint": relative_path(spec.checkpoint, out) if spec.checkpoint else None,
            "devices_file": relative_path(spec.devices_file, out) if spec.devices_file else None, "arch": spec.arch, "widths": spec.widths, "outputs": spec.outputs, "snap": spec.snap}


def _timing_record(spec: FleetSpec) -> dict[str, Any]:
    t = spec.timing
    return {"duration_s": float(t.get("duration_s", 1.0)), "iterations": t.get("iterations"),
            "warmup_ms": float(t.get("warmup_ms", 200.0)), "rounds": int(t.get("rounds", 5))}


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, (US3LError, OSError)) else f"{type(exc).__name__}: {text}"


def _plan_device(spec: FleetSpec, dev: FleetDevice, bcfg: Any, out: Path,
                 measure_accuracy: AccuracyMeasurer | None) -> tuple[dict, list[dict]]:
    """Run ``us3l bench --budget-ms`` for one device (the same :class:`BenchRun`), then its manifest entry.
    A failure of this device becomes its entry (``planned: false`` and the reason)."""
    from .report import write_csv, write_json
    from .run import BenchRun

    base = {"device": dev.name, "profile": dev.device,
            "budget": {"ms": dev.budget_ms, "percentile": dev.percentile, "batch": dev.batch,
                       "min_accuracy": dev.min_accuracy}}
    with stage(f"device {dev.name}"):
        try:
            run = BenchRun(bcfg, None, measure_accuracy)  # its stages show in the bar and the plain lines
            run.measure()
            report = run.report()
        except Exception as exc:  # a measurement that fails must not lose the other devices' results
            log.info("device %s not planned: %s", dev.name, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            return {**base, "planned": False, "reason": _one_line(exc)}, []
    report = _portable_report(report, out, run.out_dir)
    dev_dir = out / "bench" / "devices" / dev.name
    write_json(dev_dir / "report.json", report)
    write_csv(dev_dir / "latency.csv", report["results"])
    return _entry(dev, report, run, out, base, untrained=spec.arch is not None)


def _portable_report(report: dict, out: Path, bench_out: Path) -> dict:
    """The bench report with its paths relative to the plan folder (no path of this machine); the
    bench report names its files from its own folder, ``bench_out``."""
    from us3l.core.files import relative_path

    def rel(p: Any) -> Any:
        if not isinstance(p, str) or not p:
            return p
        return relative_path(p if os.path.isabs(p) else Path(bench_out) / p, out)

    rep = json.loads(json.dumps(report, default=str))
    for r in rep.get("results", []):
        r["artifact"] = rel(r.get("artifact"))
    for key in ("chosen",):
        if rep.get(key):
            rep[key]["artifact"] = rel(rep[key].get("artifact"))
    choice = rep.get("choice") or {}
    for key in ("next",):
        if choice.get(key):
            choice[key]["artifact"] = rel(choice[key].get("artifact"))
    if rep.get("deploy"):
        rep["deploy"]["artifact"] = rel(rep["deploy"].get("artifact"))
        rep["deploy"]["sidecar"] = rel(rep["deploy"].get("sidecar"))
    src = rep.get("source") or {}
    for key in ("checkpoint", "switchable"):
        src[key] = rel(src.get(key))
    config = rep.get("config") or {}
    for key in ("checkpoint", "artifact", "devices_file", "accuracy", "out_dir", "lut"):
        config[key] = rel(config.get(key))
    if rep.get("accuracy_file"):
        rep["accuracy_file"] = rel(rep["accuracy_file"])
    for key in ("accuracy_note", "accuracy_unknown_note"):
        if rep.get(key):
            rep[key] = _strip_paths(rep[key], out)
    return rep


def _strip_paths(text: str, out: Path) -> str:
    """Absolute paths inside a message, relative to the plan folder."""
    from us3l.core.files import relative_path

    return re.sub(r"(/[^\s,;:()']+)", lambda m: relative_path(m.group(1), out) or m.group(1)
                  if os.path.exists(m.group(1)) else m.group(1), text)


def _isa(env: dict) -> str:
    """The CPU instruction set: the machine, plus the vector extensions this host's CPU has."""
    machine = str(env.get("machine") or "unknown")
    if env.get("target") != "localhost":
        return machine
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd",
              "sve", "asimddp")
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    have = set(line.split(":", 1)[1].split())
                    ext = [w for w in wanted if w in have]
                    return "+".join([machine, *ext])
    except OSError:
        pass
    return machine


def _gpu_arch(gpu: Any) -> str | None:
    """The GPU architecture (compute capability, else the name) from the environment record."""
    if isinstance(gpu, dict):
        gpu = gpu.get("compute_capability") or gpu.get("sm") or gpu.get("name")
    return None if gpu in (None, "") else str(gpu)


def _fingerprint(report: dict) -> dict[str, Any]:
    env = report.get("environment") or {}
    runner = report["runner"]
    runtime = {"onnxruntime-agent": "onnxruntime", "trtexec": "tensorrt"}.get(runner, runner)
    version = env.get("onnxruntime") or env.get("trt_version") or env.get("tensorrt") or env.get("torch")
    nvp = env.get("nvpmodel") or {}
    gpu = env.get("gpu")
    return {
        "id": report.get("fingerprint"), "runtime": runtime, "runtime_version": version, "runner": runner,
        "target": env.get("target"), "machine": env.get("machine"), "cpu_isa": _isa(env),
        "cpu_model": env.get("cpu_model"), "gpu_arch": _gpu_arch(gpu),
        "jetson_model": env.get("jetson_model"),
        "power_mode": nvp.get("id") if isinstance(nvp, dict) else None, "threads": report.get("threads"),
    }


def _pair_summary(row: dict, metric: str) -> dict[str, Any]:
    return {"width": row["width"], "precision": row.get("precision") or "fp32",
            "latency_ms": row.get(f"{metric}_ms"), "accuracy": row.get("accuracy")}


def _entry(dev: FleetDevice, report: dict, run: Any, out: Path, base: dict,
           untrained: bool = False) -> tuple[dict, list[dict]]:
    """The manifest entry of a measured device (``report``: its bench report, paths relative)."""
    from .choice import choose, pareto_front

    metric = dev.percentile
    rows = report["results"]
    modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
    primary = [r for r in rows if r["batch"] == dev.batch and r.get("power_mode") == modes[0]]
    front = [_pair_summary(primary[i], metric) for i in pareto_front(primary, metric)]
    base = {**base, "fingerprint": _fingerprint(report), "front": front,
            "choice": {"reason": (report.get("choice") or {}).get("reason"),
                       "unstable": bool(report.get("unstable")),
                       "within_noise": bool(((report.get("choice") or {}).get("noise") or {}).get("within_noise"))}}
    chosen = report.get("chosen")
    if chosen is None:
        return {**base, "planned": False, "reason": (report.get("choice") or {}).get("reason")
                or "no pair within the budget"}, primary
    row = next(r for r in primary if r["width"] == chosen["width"]
               and (r.get("precision") or "fp32") == chosen["precision"])
    accuracy = row.get("accuracy")
    if dev.min_accuracy is not None and (accuracy is None or accuracy < dev.min_accuracy):
        why = (f"the most accurate pair within {metric} <= {dev.budget_ms:g} ms (width {format_width(row['width'])} "
               f"{row.get('precision')}) has " + (f"accuracy {accuracy:.4g}" if accuracy is not None else
                                                  "no measured accuracy") + f" < min_accuracy {dev.min_accuracy:g}")
        return {**base, "planned": False, "reason": why}, primary
    artifact = _copy_artifact(row, out)
    if dev.deploy_path:
        artifact["deploy_path"] = dev.deploy_path  # on the device: the one absolute path the manifest holds
    others = [r for r in primary if not (r["width"] == row["width"] and r.get("precision") == row.get("precision"))]
    runner_up = None
    if others:
        alt = choose(others, dev.budget_ms, metric).get("chosen")  # the same rule, without the chosen pair
        if alt is not None:
            runner_up = {**{k: alt[k] for k in ("width", "precision", "latency_ms", "accuracy")},
                         "accuracy_margin": (accuracy - alt["accuracy"]) if accuracy is not None
                         and alt.get("accuracy") is not None else None,
                         "latency_margin_ms": alt["latency_ms"] - row[f"{metric}_ms"]}
    nxt = (report.get("choice") or {}).get("next")
    latency = {k: row.get(f"{k}_ms") for k in METRICS}
    entry = {
        **base, "planned": True, "width": row["width"], "precision": row.get("precision") or "fp32",
        "outputs": row.get("outputs") or "features", "artifact": artifact,
        "runner": report["runner"], "threads": report.get("threads"),
        "build_on_device": report["runner"] in ("trtexec", "tensorrt"),
        "latency_ms": {**latency, "ci95": {k: v for k, v in (row.get("ci_ms") or {}).items()},
                       "n": row.get("n"), "cached": bool(row.get("cached"))},
        "headroom_ms": dev.budget_ms - row[f"{metric}_ms"],
        "accuracy": {"value": accuracy, "protocol": row.get("accuracy_protocol"),
                     "why_null": None if accuracy is not None else _why_no_accuracy(report, untrained)},
        "runner_up": runner_up,
        "next_better": None if not nxt else {"width": nxt["width"], "precision": nxt["precision"],
                                              "latency_ms": nxt["latency_ms"], "accuracy": nxt.get("accuracy"),
                                              "over_budget_ms": nxt["latency_ms"] - dev.budget_ms},
        "input_shape": list(_input_shape(run, row)),
    }
    if entry["build_on_device"]:
        env = report.get("environment") or {}
        entry["engine"] = {"trt_version": env.get("trt_version") or env.get("tensorrt"),
                           "gpu_arch": entry["fingerprint"]["gpu_arch"], "shared_with": []}
    return entry, primary


def _why_no_accuracy(report: dict, untrained: bool) -> str:
    if untrained:
        return "untrained architecture: latency planning only (name a checkpoint and its accuracy.json)"
    if report.get("accuracy_note"):
        return str(report["accuracy_note"])
    if report.get("accuracy_unknown_note"):
        return str(report["accuracy_unknown_note"])
    return ("no accuracy table with a row for this file: set measure_accuracy = true, or run "
            "'us3l eval CKPT --artifact FILE'")


def _input_shape(run: Any, row: dict) -> tuple[int, ...]:
    """The chosen artifact's example input shape (batch first), as the exporter recorded it."""
    if hasattr(run.source, "input_shape"):  # a switchable file records its own
        return tuple(int(d) for d in run.source.input_shape)
    key = run.source.key()
    rec = run.table.get_artifact(key, row["width"], run.cfg.snap, row.get("precision") or "fp32", run.outputs)
    if rec and rec.get("input_shape"):
        return tuple(int(d) for d in rec["input_shape"])
    import onnx  # not recorded (an older lookup table): read it from the file

    path = Path(row["artifact"]) if os.path.isabs(row["artifact"]) else run.cfg.out_dir.parent / row["artifact"]
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value or 1 for d in dims)


def _copy_artifact(row: dict, out: Path) -> dict[str, Any]:
    """Copy the timed file (and its sidecar) into ``PLAN/artifacts/<sha16>/`` once per content hash."""
    src = out / row["artifact"] if not os.path.isabs(row["artifact"]) else Path(row["artifact"])
    sha, _, index = str(row["sha256"]).partition("#")
    folder = out / "artifacts" / sha[:16]
    dest = folder / src.name
    if not (dest.is_file() and sha256_file(dest) == sha):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, src.read_bytes())
    sidecar = src.with_suffix(".json")
    if sidecar.is_file():
        atomic_write_bytes(dest.with_suffix(".json"), sidecar.read_bytes())
    record: dict[str, Any] = {"file": dest.relative_to(out).as_posix(), "sha256": sha, "size_bytes": dest.stat().st_size}
    if dest.with_suffix(".json").is_file():
        record["sidecar"] = dest.with_suffix(".json").relative_to(out).as_posix()
    if index:
        record["width_index"] = int(index)
    return record


def _mark_shared(entries: list[dict]) -> None:
    """Devices that deploy the same file, and engine builds shared by GPU architecture and TensorRT version."""
    by_sha: dict[str, list[str]] = {}
    for e in entries:
        if e["planned"]:
            by_sha.setdefault(e["artifact"]["sha256"], []).append(e["device"])
    for e in entries:
        if not e["planned"]:
            continue
        e["artifact"]["shared_with"] = [d for d in by_sha[e["artifact"]["sha256"]] if d != e["device"]]
        if "engine" in e:
            key = (e["artifact"]["sha256"], e["engine"]["gpu_arch"], e["engine"]["trt_version"])
            e["engine"]["shared_with"] = [o["device"] for o in entries if o is not e and "engine" in o and
                                          (o["artifact"]["sha256"], o["engine"]["gpu_arch"],
                                           o["engine"]["trt_version"]) == key]


# ------------------------------------------------------------------------------------ outputs

FLEET_CSV_COLUMNS = ("device", "planned", "reason", "profile", "runner", "threads", "width", "precision",
                     "budget_ms", "percentile", "batch", "latency_ms", "p50_ms", "ci_low_ms", "ci_high_ms",
                     "accuracy", "artifact", "sha256", "width_index", "build_on_device", "runner_up_width",
                     "runner_up_precision", "runner_up_accuracy_margin", "runner_up_latency_margin_ms", "fingerprint",
                     "runtime", "runtime_version", "cpu_isa", "gpu_arch", "power_mode", "deploy_path")


def fleet_rows(entries: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per device (``fleet.csv`` and the terminal table)."""
    rows = []
    for e in entries:
        b, fp = e["budget"], e.get("fingerprint") or {}
        lat = e.get("latency_ms") or {}
        ci = (lat.get("ci95") or {}).get(b["percentile"]) or [None, None]
        ru = e.get("runner_up") or {}
        art = e.get("artifact") or {}
        rows.append({
            "device": e["device"], "planned": e["planned"], "reason": e.get("reason"), "profile": e["profile"],
            "runner": e.get("runner") or fp.get("runner"), "threads": e.get("threads", fp.get("threads")),
            "width": e.get("width"), "precision": e.get("precision"), "budget_ms": b["ms"],
            "percentile": b["percentile"], "batch": b["batch"], "latency_ms": lat.get(b["percentile"]),
            "p50_ms": lat.get("p50"), "ci_low_ms": ci[0], "ci_high_ms": ci[1],
            "accuracy": (e.get("accuracy") or {}).get("value"), "artifact": art.get("file"), "sha256": art.get("sha256"),
            "width_index": art.get("width_index"), "build_on_device": e.get("build_on_device"),
            "runner_up_width": ru.get("width"), "runner_up_precision": ru.get("precision"),
            "runner_up_accuracy_margin": ru.get("accuracy_margin"),
            "runner_up_latency_margin_ms": ru.get("latency_margin_ms"), "fingerprint": fp.get("id"),
            "runtime": fp.get("runtime"), "runtime_version": fp.get("runtime_version"), "cpu_isa": fp.get("cpu_isa"),
            "gpu_arch": fp.get("gpu_arch"), "power_mode": fp.get("power_mode"),
            "deploy_path": art.get("deploy_path"),
        })
    return rows


def write_fleet_csv(path: Path, entries: Sequence[dict]) -> Path:
    """``fleet.csv``: :data:`FLEET_CSV_COLUMNS`, one row per device."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(FLEET_CSV_COLUMNS)
    for row in fleet_rows(entries):
        writer.writerow(["" if row[c] is None else row[c] for c in FLEET_CSV_COLUMNS])
    return atomic_write_text(path, buf.getvalue())


def write_fleet_plot(path: Path, entries: Sequence[dict], rows_by_device: dict[str, list[dict]]) -> Path:
    """One panel per device: accuracy (or width, without accuracies) against the budget's latency
    statistic per precision, the Pareto front, the budget line and the chosen point (starred)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from .choice import pareto_front
    from .report import COLORS, MARKERS

    n = max(1, len(entries))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, e in zip(axes.flat, entries):
        metric, budget = e["budget"]["percentile"], e["budget"]["ms"]
        key = f"{metric}_ms"
        rows = [r for r in rows_by_device.get(e["device"], []) if r.get(key) is not None]
        has_acc = any(r.get("accuracy") is not None for r in rows)

        def y_of(r: dict, _acc: bool = has_acc) -> float:
            return r["accuracy"] if _acc else r["width"]

        for p in dict.fromkeys(r.get("precision") or "fp32" for r in rows):
            pts = sorted((r for r in rows if (r.get("precision") or "fp32") == p
                          and (not has_acc or r.get("accuracy") is not None)), key=lambda r: r[key])
            ax.plot([r[key] for r in pts], [y_of(r) for r in pts], MARKERS.get(p, "o"), color=COLORS.get(p),
                    label=p, alpha=0.8)
        front = [rows[i] for i in pareto_front(rows, metric)]
        if len(front) > 1:
            ax.plot([r[key] for r in front], [y_of(r) for r in front], "-", color="grey", lw=1, label="front")
        ax.axvline(budget, ls="--", color="tab:red", lw=1, label=f"budget {budget:g} ms")
        if e["planned"]:
            cy = (e["accuracy"]["value"] if has_acc else e["width"])
            if cy is not None:
                ax.plot([e["latency_ms"][metric]], [cy], "*", ms=16, color="tab:red", zorder=5,
                        label=f"chosen {format_width(e['width'])} {e['precision']}")
            title = f"{e['device']}: {format_width(e['width'])} {e['precision']}"
        else:
            title = f"{e['device']}: not planned"
            ax.text(0.02, 0.02, (e.get("reason") or "")[:80], transform=ax.transAxes, fontsize=6, va="bottom")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{metric} latency (ms), batch {e['budget']['batch']}", fontsize=8)
        ax.set_ylabel("accuracy" if has_acc else "width (no accuracy)", fontsize=8)
        ax.tick_params(labelsize=7)
        if rows or e["planned"]:
            ax.legend(fontsize=6, loc="lower right")
    fig.suptitle("fleet plan: accuracy-latency front, budget and chosen point per device", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def render_fleet_table(entries: Sequence[dict], max_width: int | None = None) -> Any:
    """The fleet as a rich ``Table``: per device its runtime, the chosen pair, its latency against the
    budget, accuracy, runner-up and artifact file (a device not planned says so in red; its reason is
    in the manifest, and the CLI prints it below the table).

    With ``max_width`` (the terminal's columns), the artifact, the runner-up and the runtime columns
    are given up in that order until the table fits; the caption names them (all are in fleet.csv).
    """
    from rich.table import Table

    def runner_up(e: dict) -> str:
        ru = e.get("runner_up")
        if not ru:
            return ""
        margin = (f"acc {ru['accuracy_margin']:+.3f}" if ru.get("accuracy_margin") is not None
                  else f"{ru['latency_margin_ms']:+.3f} ms")
        return f"{format_width(ru['width'])} {ru['precision']} ({margin})"

    cells: list[dict[str, str]] = []
    for row, e in zip(fleet_rows(entries), entries):
        pct = row["percentile"]
        if not row["planned"]:
            cells.append({"device": row["device"], "budget": f"{pct} <= {row['budget_ms']:g} ms",
                          "choice": "not planned"})  # the reason is long: the CLI prints it below the table
            continue
        runtime = f"{row['runtime']} {row['runtime_version'] or ''}".strip() + (f", {row['threads']}t"
                                                                                if row["threads"] else "")
        acc = row["accuracy"]
        cells.append({
            "device": row["device"], "runtime": runtime,
            "choice": f"{format_width(row['width'])} {row['precision']}",
            "latency": f"{row['latency_ms']:.3f}", "budget": f"{pct} <= {row['budget_ms']:g} ms",
            "acc": "?" if acc is None else f"{acc:.4f}", "runner-up": runner_up(e),
            "artifact": Path(row["artifact"]).name + (" (engine: build on device)" if row["build_on_device"] else ""),
        })
    order = ["device", "runtime", "budget", "choice", "latency", "acc", "runner-up", "artifact"]
    columns = [c for c in order if any(c in r for r in cells)]
    dropped: list[str] = []

    def needed(cols: list[str]) -> int:
        return 1 + sum(3 + max([len(c)] + [len(r.get(c, "")) for r in cells]) for c in cols)

    for name in ("artifact", "runner-up", "runtime"):
        if max_width is None or needed(columns) <= max_width:
            break
        if name in columns:
            columns.remove(name)
            dropped.append(name)
    table = Table(title="fleet plan")
    for c in columns:
        table.add_column(c, justify="right" if c in ("latency", "acc") else "left", no_wrap=c != "artifact")
    for r in cells:
        table.add_row(*(r.get(c, "") for c in columns), style="red" if r["choice"] == "not planned" else None)
    table.caption = "latency: the budget's percentile, ms; acc ? = not measured on that exact file (manifest: why_null)"
    if dropped:
        table.caption += f"; not shown at this width: {', '.join(dropped)} (in fleet.csv)"
    return table


# -------------------------------------------------------------------------------------- checking

@dataclass(frozen=True)
class CheckConfig:
    """Everything ``us3l fleet check`` needs.

    Attributes:
        manifest: ``manifest.json`` of a plan folder (its artifacts are found beside it).
        threshold_pct: largest p50 change, in percent, before a device counts as drifted.
        devices_file: device profiles (``None``: the user's). accept_new_host_key: as ``us3l bench``.
        deployed: ``(device, path)`` pairs: where each device holds its file, over the manifest's
            ``artifact.deploy_path`` (``--deployed NAME=PATH``); :func:`check_fleet` refuses a name the
            manifest lacks.
    """

    manifest: Path
    threshold_pct: float = DEFAULT_THRESHOLD_PCT
    devices_file: Path | None = None
    accept_new_host_key: bool = False
    deployed: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        from us3l.core.checks import check_number

        check_number("--threshold", self.threshold_pct, minimum=0, exclusive=True)
        for name, path in self.deployed:
            if not is_deploy_path(path):
                raise ConfigError(f"--deployed {name}={path}: {path!r} is invalid; valid: {DEPLOY_PATH_VALID}")


def parse_deployed(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--deployed NAME=PATH`` values as ``(name, path)`` pairs (each device at most once).

    Raises:
        ConfigError: no ``=``, an empty name, or a device named twice.
    """
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--deployed {item!r} is invalid; valid: NAME=PATH, e.g. "
                              "--deployed edge=/opt/app/model.onnx")
        if name.strip() in pairs:
            raise ConfigError(f"--deployed names device {name.strip()!r} twice; valid: one NAME=PATH per device")
        pairs[name.strip()] = path
    return tuple(pairs.items())


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


def _remote_sha256(ex: Any, remote: str) -> str:
    """sha256 of a file on the device (``sha256sum``, else ``python3 -c``)."""
    res = ex.run_shell(f"sha256sum -- {shlex.quote(remote)} 2>/dev/null || python3 -c "
                       + shlex.quote("import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read())"
                                     ".hexdigest())") + f" {shlex.quote(remote)}", check=False, timeout=120)
    words = res.stdout.split()
    if res.returncode != 0 or not words:
        raise RemoteError(f"{ex.describe()}: cannot hash {remote} on the device")
    return words[0]


def _device_sha256(ex: Any, path: str) -> str | None:
    """sha256 of a file on a remote device, ``None`` when the device has no such file."""
    if ex.run_shell(f"test -f {shlex.quote(path)}", check=False, timeout=60).returncode != 0:
        return None
    return _remote_sha256(ex, path)


def _deployed_problem(ex: Any, remote: bool, deployed: str, sha256: str) -> str | None:
    """Why the file deployed at ``deployed`` is not the manifest's (missing or another sha256), or ``None``."""
    if remote:
        got = _device_sha256(ex, deployed)
    else:
        got = sha256_file(Path(deployed)) if Path(deployed).is_file() else None
    if got is None:
        return (f"{deployed} is MISSING on {ex.describe()} (the deploy_path; copy the plan's artifact there, "
                "or name its place with --deployed)")
    if got != sha256:
        return f"{deployed} on {ex.describe()}: sha256 {got[:12]} on the device, {sha256[:12]} in the manifest"
    return None


def check_device(entry: dict, plan_dir: Path, cfg: CheckConfig, timing: Any) -> dict[str, Any]:
    """Re-measure one planned device's artifact and verify its hash there.

    With a deploy path (``cfg.deployed``, else the manifest's ``artifact.deploy_path``) the file the
    device holds there is hashed on the device (``sha256sum`` over ssh for a remote one) and measured
    in place; the plan copy is neither uploaded nor needed. Without one, the plan copy is hashed here
    and, for a remote device, uploaded to a temp dir, hashed there and measured.

    Returns:
        ``{"device", "status", "message", "p50_ms", "planned_p50_ms", "drift_pct", "sha256_ok",
        "verified", "deploy_path", ...}``; ``status`` is one of :data:`CHECK_STATUSES`, ``verified``
        ``"deployed"`` or ``"plan-copy"`` (``None`` for a device not planned).
    """
    from .artifacts import BenchArtifact
    from .devices import get_device
    from .environment import fingerprint
    from .remote.executor import make_executor
    from .run import IN_PROCESS, resolve_runner
    from .runners import RunnerOptions, get_runner
    from .sweep import MeasureContext, measure_rows

    name = entry["device"]
    out: dict[str, Any] = {"device": name, "profile": entry.get("profile"), "status": "ERROR", "message": "",
                           "p50_ms": None, "planned_p50_ms": None, "drift_pct": None, "sha256_ok": None,
                           "fingerprint_changed": None, "verified": None, "deploy_path": None}
    if not entry.get("planned"):
        out.update(status="SKIPPED", message=f"not planned: {entry.get('reason')}")
        return out
    art = entry["artifact"]
    path = plan_dir / art["file"]
    deployed = dict(cfg.deployed).get(name) or art.get("deploy_path")
    out.update(verified="deployed" if deployed else "plan-copy", deploy_path=deployed)
    planned_p50 = (entry.get("latency_ms") or {}).get("p50")
    out["planned_p50_ms"] = planned_p50
    if deployed is None:  # the plan copy is the file measured (and uploaded to a remote device)
        if not path.is_file():
            out.update(status="HASH", sha256_ok=False, message=f"{art['file']} is missing from the plan folder")
            return out
        local_sha = sha256_file(path)
        if local_sha != art["sha256"]:
            out.update(status="HASH", sha256_ok=False,
                       message=f"{art['file']}: sha256 {local_sha[:12]} here, {art['sha256'][:12]} in the manifest")
            return out
    sha = art["sha256"] + (f"#{art['width_index']}" if art.get("width_index") is not None else "")
    verified = "the plan copy"
    try:
        profile = get_device(entry["profile"], cfg.devices_file)
        runner_name = resolve_runner(entry["runner"] if entry["runner"] != "onnxruntime-agent" else "onnxruntime",
                                     profile)
        runner_cls = get_runner(runner_name)
        needs_executor = runner_name not in IN_PROCESS
        with make_executor(profile, cfg.accept_new_host_key) as ex:
            if deployed is not None:  # the file the device runs: hashed there, then measured in place
                problem = _deployed_problem(ex, profile.is_remote, deployed, art["sha256"])
                if problem:
                    out.update(status="HASH", sha256_ok=False, message=problem)
                    return out
                # upload_once (the agent's key, trtexec's key for the plain ONNX) returns the deployed
                # file, so nothing is uploaded; an in-process runner is given the path itself (below)
                for key in (sha, f"{sha}:plain"):
                    ex.uploaded[key] = deployed
                verified = f"{deployed} on the device"
            elif profile.is_remote:  # the plan copy, uploaded once, is the one hashed and measured there
                remote = ex.upload_once(path, art["sha256"], f"model_{art['sha256'][:16]}.onnx")
                device_sha = _remote_sha256(ex, remote)
                if device_sha != art["sha256"]:
                    out.update(status="HASH", sha256_ok=False, message=f"sha256 on {ex.describe()} is "
                               f"{device_sha[:12]}, {art['sha256'][:12]} in the manifest")
                    return out
                verified = "the plan copy uploaded to the device"
            out["sha256_ok"] = True
            extra = {"trtexec": profile.trtexec, "python": profile.python, "jetson": profile.jetson,
                     "tegrastats": profile.tegrastats if profile.jetson else None,
                     "trt_version": None, "max_batch": int(entry["budget"]["batch"])}
            options = RunnerOptions(profile.local_device, entry["precision"], entry.get("threads"),
                                    ex if needs_executor else None, extra)
            runner_cls.check_available(options)
            env = runner_cls.environment(options)
            fp = fingerprint(env)
            out["fingerprint_changed"] = fp != (entry.get("fingerprint") or {}).get("id")
            measured = Path(deployed) if deployed is not None and not profile.is_remote else path
            artifact = BenchArtifact(width=float(entry["width"]), path=measured, sha256=sha,
                                     input_shape=tuple(entry["input_shape"]), precision=entry["precision"],
                                     outputs=entry.get("outputs") or "features", width_index=art.get("width_index"))
            ctx = MeasureContext(runner_cls, runner_name, options, timing, None, fp, name, force=True)
            rows = measure_rows(ctx, [artifact], [int(entry["budget"]["batch"])])
    except RemoteError as exc:
        out.update(status="UNREACHABLE", message=_one_line(exc))
        return out
    except Exception as exc:  # every other device is still checked
        out.update(status="ERROR", message=_one_line(exc))
        return out
    p50 = rows[0].p50_ms
    out["p50_ms"] = p50
    if p50 is None or not planned_p50:
        out.update(status="ERROR", message="no p50 to compare")
        return out
    drift = (p50 / planned_p50 - 1.0) * 100.0
    out["drift_pct"] = drift
    ok = abs(drift) <= cfg.threshold_pct
    out["status"] = "OK" if ok else "DRIFT"
    out["message"] = (f"p50 {p50:.3f} ms vs {planned_p50:.3f} ms planned ({drift:+.1f} %, "
                      f"threshold ±{cfg.threshold_pct:g} %)" + (f"; sha256 verified: {verified}" if ok else "")
                      + ("; fingerprint changed since the plan" if out["fingerprint_changed"] else ""))
    return out


def check_fleet(cfg: CheckConfig, progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Check every device of a manifest (one failing device never stops the others).

    Returns:
        One :func:`check_device` record per manifest device, in manifest order.

    Raises:
        ConfigError: the manifest is unreadable or not a fleet manifest, or ``cfg.deployed`` names a
            device it lacks.
    """
    from .runners import TimingConfig

    manifest = read_manifest(cfg.manifest)
    names = [e["device"] for e in manifest["devices"]]
    for name, _ in cfg.deployed:  # before anything is measured
        if name not in names:
            raise ConfigError(f"--deployed {name}=...: no device {name!r} in {cfg.manifest}; "
                              f"valid: {', '.join(names)}")
    plan_dir = Path(cfg.manifest).parent
    recorded = (manifest.get("source") or {}).get("devices_file")
    if cfg.devices_file is None and recorded and (plan_dir / recorded).is_file():  # the plan's own profiles
        cfg = dataclasses.replace(cfg, devices_file=plan_dir / recorded)
    t = manifest.get("timing") or {}
    timing = TimingConfig(warmup_ms=float(t.get("warmup_ms", 200.0)), duration_s=float(t.get("duration_s", 1.0)),
                          iterations=t.get("iterations"), rounds=int(t.get("rounds", 5)))
    results = []
    devices = manifest["devices"]
    with stage("checking devices", total=len(devices), unit="devices") as current:
        for i, entry in enumerate(devices):
            if progress:
                progress(i, len(devices), f"device {entry['device']}")
            results.append(check_device(entry, plan_dir, cfg, timing))
            current.update(i + 1)
    return results


def schema() -> dict:
    """The manifest's JSON Schema (shipped as ``fleet-manifest.schema.json``)."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


__all__ = ["CHECK_STATUSES", "CheckConfig", "FleetConfig", "FleetDevice", "FleetPlan", "FleetSpec", "MANIFEST_FILE",
           "MANIFEST_FORMAT", "bench_config", "check_device", "check_fleet", "fleet_rows", "is_deploy_path",
           "load_fleet", "parse_deployed", "plan_fleet", "read_manifest", "render_fleet_table", "schema",
           "write_fleet_csv", "write_fleet_plot"]
