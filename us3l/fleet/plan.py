"""``us3l fleet plan``: every device of the fleet file planned, and the plan folder written.

:func:`plan_fleet` runs, for each device in turn, the very :class:`~us3l.benchmarks.run.BenchRun`
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
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError, US3LError
from us3l.core.files import atomic_write_json, check_writable_dir, sha256_file
from us3l.core.heartbeat import stage
from us3l.core.precision import Precision
from us3l.core.width import parse_widths

from .entry import device_entry, mark_shared, portable_report
from .manifest import MANIFEST_FILE, MANIFEST_FORMAT, ProgressFn, one_line
from .outputs import write_fleet_csv, write_fleet_plot
from .spec import FleetDevice, FleetSpec, load_fleet

log = logging.getLogger(__name__)

#: ``fn(checkpoint, artifact files, PyTorch widths, accuracy table)`` (the API passes the trainer's evaluator)
AccuracyMeasurer = Callable[[Path, list[Path], list[float], Path], None]


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
    from us3l.benchmarks.config import BenchConfig

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
    from us3l.benchmarks.devices import get_device
    from us3l.benchmarks.run import resolve_runner

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
                switchable[precision] = one_line(exc)
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
    mark_shared(entries)
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

    from us3l.benchmarks.artifacts import ModelSource

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


def _plan_device(spec: FleetSpec, dev: FleetDevice, bcfg: Any, out: Path,
                 measure_accuracy: AccuracyMeasurer | None) -> tuple[dict, list[dict]]:
    """Run ``us3l bench --budget-ms`` for one device (the same :class:`BenchRun`), then its manifest entry.
    A failure of this device becomes its entry (``planned: false`` and the reason)."""
    from us3l.benchmarks.report import write_csv, write_json
    from us3l.benchmarks.run import BenchRun

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
            return {**base, "planned": False, "reason": one_line(exc)}, []
    report = portable_report(report, out, run.out_dir)
    dev_dir = out / "bench" / "devices" / dev.name
    write_json(dev_dir / "report.json", report)
    write_csv(dev_dir / "latency.csv", report["results"])
    return device_entry(dev, report, run, out, base, untrained=spec.arch is not None)


__all__ = ["AccuracyMeasurer", "FleetConfig", "FleetPlan", "bench_config", "export_switchable", "plan_fleet"]
