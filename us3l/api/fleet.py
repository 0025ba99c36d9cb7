"""Fleet calls: ``fleet_plan`` (one manifest for a fleet of devices) and ``fleet_check`` (is it still true?).

Each builds the benchmarks room's frozen config (:class:`us3l.fleet.FleetConfig`,
:class:`~us3l.fleet.CheckConfig`), calls its entry point and returns a typed, torch-free result
built from what was written (``manifest.json``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from .progress import ProgressArg, resolve_progress

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class FleetDevicePlan:
    """One device of a fleet plan (a ``manifest.json`` entry).

    Attributes:
        device / profile: the fleet file's name for it and the device profile it ran on.
        planned: a pair was chosen; else ``reason`` says why not (unreachable, failed, nothing fits).
        width / precision / artifact / sha256 / width_index: what to deploy (``artifact`` relative
            to the plan folder).
        latency_ms: the budget's statistic of the chosen pair; budget_ms / percentile: the budget.
        accuracy: measured on that exact file (``None``: unknown, see the manifest's ``why_null``).
        build_on_device: a TensorRT engine must be built on the device from the artifact.
        entry: the full manifest entry.
    """

    device: str
    profile: str
    planned: bool
    reason: str | None
    width: float | None
    precision: str | None
    artifact: str | None
    sha256: str | None
    width_index: int | None
    latency_ms: float | None
    budget_ms: float
    percentile: str
    accuracy: float | None
    build_on_device: bool
    entry: dict[str, Any] = field(repr=False)

    @classmethod
    def from_entry(cls, e: dict[str, Any]) -> FleetDevicePlan:
        art = e.get("artifact") or {}
        b = e["budget"]
        return cls(device=e["device"], profile=e["profile"], planned=bool(e["planned"]), reason=e.get("reason"),
                   width=e.get("width"), precision=e.get("precision"), artifact=art.get("file"),
                   sha256=art.get("sha256"), width_index=art.get("width_index"),
                   latency_ms=(e.get("latency_ms") or {}).get(b["percentile"]), budget_ms=float(b["ms"]),
                   percentile=b["percentile"], accuracy=(e.get("accuracy") or {}).get("value"),
                   build_on_device=bool(e.get("build_on_device")), entry=e)


@dataclass(frozen=True)
class FleetPlanResult:
    """What :func:`fleet_plan` wrote.

    Attributes:
        devices: one :class:`FleetDevicePlan` per device, in the fleet file's order.
        manifest: the ``manifest.json`` content. files: ``manifest``, ``csv`` and ``plot`` paths.
    """

    devices: tuple[FleetDevicePlan, ...]
    manifest: dict[str, Any] = field(repr=False)
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every device was planned."""
        return all(d.planned for d in self.devices)

    def device(self, name: str) -> FleetDevicePlan:
        """The plan of the device ``name``.

        Raises:
            ConfigError: no such device in the plan.
        """
        from ..core.errors import unknown_name

        for d in self.devices:
            if d.device == name:
                return d
        raise unknown_name("device", name, [d.device for d in self.devices])


@dataclass(frozen=True)
class DeviceCheck:
    """``fleet check`` of one device.

    Attributes:
        device / status: ``OK``, ``DRIFT`` (p50 beyond the threshold), ``HASH`` (the artifact differs
            or is missing), ``UNREACHABLE``, ``ERROR`` (the measurement failed) or ``SKIPPED`` (not
            planned). message: the one line. p50_ms / planned_p50_ms / drift_pct: the comparison.
        sha256_ok: the hash was verified on the device (``None``: not reached).
        fingerprint_changed: the runtime or machine facts differ from the plan's.
        verified: what was hashed and measured: ``"deployed"`` (the file at ``deploy_path`` on the
            device) or ``"plan-copy"`` (the plan folder's copy, uploaded to a remote device);
            ``None`` for a device not planned.
        deploy_path: the deployed file's path on the device (``None``: the plan copy was checked).
    """

    device: str
    status: str
    message: str
    p50_ms: float | None
    planned_p50_ms: float | None
    drift_pct: float | None
    sha256_ok: bool | None
    fingerprint_changed: bool | None
    verified: str | None = None
    deploy_path: str | None = None

    @property
    def ok(self) -> bool:
        """Nothing to fix on this device."""
        return self.status in ("OK", "SKIPPED")

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "status": self.status, "ok": self.ok, "message": self.message,
                "p50_ms": self.p50_ms, "planned_p50_ms": self.planned_p50_ms, "drift_pct": self.drift_pct,
                "sha256_ok": self.sha256_ok, "fingerprint_changed": self.fingerprint_changed,
                "verified": self.verified, "deploy_path": self.deploy_path}


@dataclass(frozen=True)
class FleetCheckResult:
    """What :func:`fleet_check` found: one :class:`DeviceCheck` per manifest device."""

    manifest: Path
    threshold_pct: float
    devices: tuple[DeviceCheck, ...]

    @property
    def ok(self) -> bool:
        """No drift, no hash difference, every planned device reached and measured."""
        return all(d.ok for d in self.devices)

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": str(self.manifest), "threshold_pct": self.threshold_pct, "ok": self.ok,
                "devices": [d.to_dict() for d in self.devices]}


def fleet_plan(fleet_file: PathLike, out: PathLike = "plan", *, force: bool = False, plot: bool = True,
               progress: ProgressArg = None) -> FleetPlanResult:
    """Plan a fleet: for each device of ``fleet_file``, the most accurate (width, precision) within its
    budget, chosen exactly as :func:`us3l.bench` with ``budget_ms`` chooses, and one manifest.

    Args:
        fleet_file: FLEET.toml (model, widths, timing, one ``[devices.NAME]`` table per device).
        out: the plan folder: ``manifest.json``, ``fleet.csv``, ``fleet.png``, ``artifacts/``, ``bench/``.
        force: re-export and re-measure what the plan's lookup table already holds.
        plot: write ``fleet.png``.
        progress: ``True`` for a bar, or ``fn(done, total, message)``.

    Returns:
        :class:`FleetPlanResult` (``complete`` is False when a device was not planned; the others are).

    Raises:
        ConfigError, UnknownNameError: a bad fleet file or device, before anything is measured.
    """
    from us3l.fleet import FleetConfig, plan_fleet

    from .commands import _measure_accuracy

    cfg = FleetConfig(fleet_file=Path(fleet_file), out_dir=Path(out), force=force, plot=plot)
    with resolve_progress(progress, "planning the fleet") as report:
        plan = plan_fleet(cfg, progress=report, measure_accuracy=_measure_accuracy)
    return FleetPlanResult(devices=tuple(FleetDevicePlan.from_entry(e) for e in plan.manifest["devices"]),
                           manifest=plan.manifest, files=dict(plan.paths))


def fleet_check(manifest: PathLike, *, threshold_pct: float = 10.0, devices_file: PathLike | None = None,
                accept_new_host_key: bool = False, deployed: Mapping[str, str] | None = None,
                progress: ProgressArg = None) -> FleetCheckResult:
    """Re-measure each planned device's artifact, verify its sha256 on the device, compare the p50.

    A device with a deploy path (``deployed``, else the fleet file's ``deploy_path`` recorded in the
    manifest) has the file it holds there hashed on it and measured in place; the others have the
    plan copy checked (uploaded to a remote device).

    Args:
        manifest: ``manifest.json`` of a plan folder.
        threshold_pct: largest p50 change in percent before a device counts as drifted.
        devices_file: device profiles (default ``~/.config/us3l/devices.toml``).
        accept_new_host_key: trust an unknown ssh host key on first contact.
        deployed: ``{device: absolute path of its deployed file on that device}``, over the manifest's.
        progress: ``True`` for a bar, or ``fn(done, total, message)``.

    Returns:
        :class:`FleetCheckResult`; every device is checked whatever the others' outcome.

    Raises:
        ConfigError: unreadable manifest, a bad threshold, or a ``deployed`` entry naming a device the
            manifest lacks or a path that is not absolute.

    Examples:
        >>> us3l.fleet_check("plan/manifest.json", deployed={"edge": "/opt/app/model.onnx"})  # doctest: +SKIP
    """
    from us3l.fleet import CheckConfig, check_fleet

    cfg = CheckConfig(manifest=Path(manifest), threshold_pct=threshold_pct,
                      devices_file=Path(devices_file) if devices_file is not None else None,
                      accept_new_host_key=accept_new_host_key,
                      deployed=tuple((str(k), str(v)) for k, v in (deployed or {}).items()))
    with resolve_progress(progress, "checking the fleet") as report:
        records = check_fleet(cfg, progress=report)
    return FleetCheckResult(manifest=Path(manifest), threshold_pct=threshold_pct, devices=tuple(
        DeviceCheck(device=r["device"], status=r["status"], message=r["message"], p50_ms=r["p50_ms"],
                    planned_p50_ms=r["planned_p50_ms"], drift_pct=r["drift_pct"], sha256_ok=r["sha256_ok"],
                    fingerprint_changed=r["fingerprint_changed"], verified=r["verified"],
                    deploy_path=r["deploy_path"]) for r in records))
