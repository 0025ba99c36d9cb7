"""A planned device's manifest entry, built from its ``us3l bench --budget-ms`` report.

:func:`device_entry` turns a device's bench report (made portable by :func:`portable_report`: its
paths relative to the plan folder) into its manifest entry: the chosen pair, its latency and
headroom, accuracy (or why there is none), the runner-up, the runtime fingerprint, and a copy of the
chosen artifact under ``PLAN/artifacts/<sha16>/``. :func:`mark_shared` then records which devices
deploy the same file and which share an engine build.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from us3l.core.files import atomic_write_bytes, sha256_file
from us3l.core.width import format_width

from us3l.benchmarks.stats import METRICS
from .spec import FleetDevice


def portable_report(report: dict, out: Path, bench_out: Path) -> dict:
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


def device_entry(dev: FleetDevice, report: dict, run: Any, out: Path, base: dict,
           untrained: bool = False) -> tuple[dict, list[dict]]:
    """The manifest entry of a measured device (``report``: its bench report, paths relative)."""
    from us3l.benchmarks.choice import choose, pareto_front

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


def mark_shared(entries: list[dict]) -> None:
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


__all__ = ["device_entry", "mark_shared", "portable_report"]
