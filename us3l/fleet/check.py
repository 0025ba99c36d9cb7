"""``us3l fleet check``: each planned device's artifact re-measured and its sha256 verified there.

:func:`check_fleet` re-measures each planned device's artifact with the plan's methodology,
verifies its sha256 on the device (after the upload, over ssh for a remote device) and compares
the p50 with the manifest's. A device with a ``deploy_path`` (the fleet file's, or ``--deployed``)
has that very file hashed and measured on it, in place, rather than an uploaded plan copy.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError, RemoteError
from us3l.core.files import sha256_file
from us3l.core.heartbeat import stage

from .manifest import ProgressFn, one_line, read_manifest
from .spec import DEPLOY_PATH_VALID, is_deploy_path

#: ``fleet check`` statuses, in the order a line reports them; every one but OK and SKIPPED fails the check.
CHECK_STATUSES = ("OK", "DRIFT", "HASH", "UNREACHABLE", "ERROR", "SKIPPED")
DEFAULT_THRESHOLD_PCT = 10.0


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
    from us3l.benchmarks.artifacts import BenchArtifact
    from us3l.benchmarks.devices import get_device
    from us3l.benchmarks.environment import fingerprint
    from us3l.benchmarks.remote.executor import make_executor
    from us3l.benchmarks.run import IN_PROCESS, resolve_runner
    from us3l.benchmarks.runners import RunnerOptions, get_runner
    from us3l.benchmarks.sweep import MeasureContext, measure_rows

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
        out.update(status="UNREACHABLE", message=one_line(exc))
        return out
    except Exception as exc:  # every other device is still checked
        out.update(status="ERROR", message=one_line(exc))
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
    from us3l.benchmarks.runners import TimingConfig

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


__all__ = ["CHECK_STATUSES", "DEFAULT_THRESHOLD_PCT", "CheckConfig", "check_device", "check_fleet", "parse_deployed"]
