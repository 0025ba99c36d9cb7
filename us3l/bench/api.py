"""``run_bench``: the one library call behind ``us3l bench``.

device -> runner -> (executor) -> environment fingerprint -> export or reuse artifacts -> measure
missing points (interleaved, per power mode) -> accuracy join -> choice / search -> reports.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from us3l.core.accuracy import read_accuracy_file
from us3l.core.errors import ConfigError
from us3l.core.width import parse_widths

from .artifacts import ModelSource, prepare_artifacts
from .config import BenchConfig
from .devices import DeviceProfile, get_device
from .environment import fingerprint
from .lut import LatencyTable, default_cache_path
from .remote.executor import make_executor
from .report import CSV_COLUMNS, write_csv, write_json, write_plot
from .runners import RunnerOptions, TimingConfig, get_runner
from .choice import accuracy_for, accuracy_mismatch, accuracy_table, choose, pareto_front
from .sweep import MeasureContext, ProgressFn, measure_rows

log = logging.getLogger(__name__)
IN_PROCESS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_OUT = Path("us3l-bench")


@dataclass
class BenchResult:
    """What :func:`run_bench` produced: the report dict and the files written."""

    report: dict
    paths: dict[str, Path] = field(default_factory=dict)


def resolve_runner(name: str, profile: DeviceProfile) -> str:
    """Registry name of the runner for ``name`` on ``profile`` (remote onnxruntime -> the agent).

    Raises:
        ConfigError: an in-process runner requested for a remote device.
    """
    if profile.is_remote:
        if name == "onnxruntime":
            return "onnxruntime-agent"
        if name in IN_PROCESS:
            raise ConfigError(f"runner {name!r} runs in this process; on remote device {profile.name!r} "
                              "use onnxruntime (agent) or trtexec")
    get_runner(name)  # unknown -> UnknownNameError listing runners
    return name


def _version_tuple(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(p) for p in str(text).split(".")[:3])
    except ValueError:
        raise ConfigError(f"trt_version {text!r} is invalid; valid: '10.3.0'") from None


def _width_info(source: ModelSource, table: LatencyTable, force: bool) -> dict:
    """``{"lo", "hi", "ladder", "hash"}`` of the source (:meth:`ModelSource.width_info`), remembered
    in the lookup table so a cached run never imports torch."""
    key = source.key()
    info = None if force else table.sources.get(key)
    if info is None or "hash" not in info:
        info = table.sources[key] = source.width_info()
    return info


def _config_dict(cfg: BenchConfig, widths: list[float]) -> dict:
    data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    data["batches"], data["power_modes"], data["widths_resolved"] = list(cfg.batches), list(cfg.power_modes), widths
    return data


def run_bench(cfg: BenchConfig, progress: ProgressFn | None = None) -> BenchResult:
    """Benchmark a width ladder on a device and (with a budget) choose the width.

    Args:
        cfg: the frozen configuration.
        progress: ``fn(done, total, description)`` called as points are measured.

    Returns:
        :class:`BenchResult` with the report (also written as ``report.json``, ``latency.csv`` and
        ``latency.png`` under the output dir).

    Raises:
        UnknownNameError: unknown device or runner. ConfigError: bad profile or options.
        RemoteError: ssh problems. BackendUnavailableError: missing backend.

    Examples:
        >>> # run_bench(BenchConfig(arch="us_resnet18_cifar", widths="0.25:1.0:0.25", budget_ms=5))
    """
    started = time.perf_counter()
    profile = get_device(cfg.device, cfg.devices_file)
    runner_name = resolve_runner(cfg.runner or profile.runner, profile)
    runner_cls = get_runner(runner_name)
    precision, threads = cfg.precision or profile.precision, cfg.threads or profile.threads
    source = ModelSource(cfg.checkpoint, cfg.arch, cfg.snap)
    out_dir = cfg.out_dir or DEFAULT_OUT
    table = LatencyTable(cfg.lut or (out_dir / "lut.json" if cfg.out_dir else default_cache_path()))
    info = _width_info(source, table, cfg.force)
    lo, hi, ladder = float(info["lo"]), float(info["hi"]), [float(w) for w in info["ladder"]]
    widths = parse_widths(cfg.widths, lo, hi) if cfg.widths else (ladder or parse_widths("0.25:1.0:0.25", lo, hi))
    timing = TimingConfig(warmup_ms=cfg.warmup_ms, duration_s=cfg.duration_s, iterations=cfg.iterations,
                          rounds=cfg.rounds, idle_gap_ms=cfg.idle_gap_ms)
    needs_executor = runner_name not in IN_PROCESS
    extra = {"trtexec": profile.trtexec, "python": profile.python, "jetson": profile.jetson,
             "tegrastats": profile.tegrastats if profile.jetson else None,
             "trt_version": _version_tuple(profile.trt_version), "max_batch": max(cfg.batches)}
    modes = list(cfg.power_modes or profile.power_modes)
    if modes and not profile.jetson:
        raise ConfigError(f"--power-modes needs a Jetson device; {profile.name!r} is not marked jetson = true")
    rows: list[dict] = []
    search_out = None
    executor = make_executor(profile, cfg.accept_new_host_key) if needs_executor else contextlib.nullcontext()
    with executor as ex:
        options = RunnerOptions(profile.local_device, precision, threads, ex if needs_executor else None, extra)
        runner_cls.check_available(options)
        env = runner_cls.environment(options)
        fp = fingerprint(env)
        export_precision = "fp32"  # reduced precision is a TensorRT build flag (<= 10) or converted there (>= 11)
        artifacts = prepare_artifacts(source, widths, out_dir, export_precision, table, cfg.force, progress)
        original = (env.get("nvpmodel") or {}).get("id") if modes else None
        try:
            for mode in modes or [None]:
                if mode is not None:
                    from .remote.jetson import set_power_mode

                    env.setdefault("power_mode_states", {})[str(mode)] = set_power_mode(ex, mode)
                ctx = MeasureContext(runner_cls, runner_name, options, timing, table, fp, profile.name,
                                     cfg.force, mode)
                rows += measure_rows(ctx, artifacts, cfg.batches, progress)
                if cfg.search and mode == (modes[0] if modes else None):
                    from .search import search_width

                    search_out = search_width(source, ctx, lo, hi, cfg.search_step, cfg.batches[0], cfg.budget_ms,
                                              cfg.metric, out_dir, export_precision, table, progress)
        finally:
            table.save()
            if modes and original is not None and original != modes[-1]:
                from .remote.jetson import set_power_mode

                try:
                    set_power_mode(ex, original)
                except Exception as exc:  # never mask the measurement's own error
                    log.warning("could not restore power mode %s: %s", original, exc)
    return _finish(cfg, profile, runner_name, precision, threads, env, fp, widths, rows, search_out,
                   out_dir, started, info.get("hash"))


def _finish(cfg: BenchConfig, profile: DeviceProfile, runner_name: str, precision: str, threads: int | None,
            env: dict, fp: str, widths: list[float], rows: list[dict], search_out: dict | None, out_dir: Path,
            started: float, checkpoint_hash: str | None = None) -> BenchResult:
    acc_path = cfg.accuracy
    if acc_path is None and cfg.checkpoint is not None:
        candidate = Path(cfg.checkpoint).with_name("accuracy.json")
        acc_path = candidate if candidate.is_file() else None
    acc: dict = {}
    acc_note = None
    if acc_path:
        data = read_accuracy_file(acc_path)  # read once: provenance check, then the table
        acc_note = accuracy_mismatch(data, acc_path, checkpoint_hash, cfg.snap)
        if acc_note:
            log.info("%s", acc_note)  # returned in report["accuracy_note"]; the CLI prints it
        else:
            acc = accuracy_table(data["results"], acc_path)
    if search_out:
        seen = {(r["width"], r["batch"], r.get("power_mode")) for r in rows}
        rows += [r for r in search_out["probes"] if (r["width"], r["batch"], r.get("power_mode")) not in seen]
    for r in rows:
        entry = accuracy_for(r["width"], r.get("aliases") or [], acc) if acc else None
        r["accuracy"] = entry["accuracy"] if entry else None
    rows.sort(key=lambda r: (r.get("power_mode") is not None, r.get("power_mode") or 0, r["batch"], r["width"]))
    rows = [{**{c: r.get(c) for c in CSV_COLUMNS}, **r} for r in rows]  # canonical key order
    modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
    primary = [r for r in rows if r["batch"] == cfg.batches[0] and r.get("power_mode") == modes[0]]
    report = {
        "schema": "us3l-bench/1", "device": profile.name, "runner": runner_name, "precision": precision,
        "threads": threads, "fingerprint": fp, "environment": env,
        "source": {"checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None, "arch": cfg.arch},
        "accuracy_file": str(acc_path) if acc_path else None, "accuracy_note": acc_note,
        "config": _config_dict(cfg, widths),
        "results": rows, "pareto_widths": [primary[i]["width"] for i in pareto_front(primary, cfg.metric)],
    }
    if cfg.budget_ms is not None:
        choice = choose(primary, cfg.budget_ms, cfg.metric)
        if search_out is not None:
            if search_out["width"] is None:
                choice.update(chosen=None, reason=search_out["reason"])
            else:
                row = next(r for r in search_out["probes"] if r["width"] == search_out["width"])
                choice.update(chosen={"width": row["width"], "latency_ms": row[f"{cfg.metric}_ms"],
                                      "accuracy": row.get("accuracy"), "aliases": row.get("aliases", []),
                                      "width_range": search_out["width_range"]}, reason=search_out["reason"])
            report["search"] = {k: v for k, v in search_out.items() if k != "probes"}
        report["chosen"] = choice.pop("chosen")
        report["choice"] = choice
        if len(modes) > 1:
            report["policy"] = {str(m): (choose([r for r in rows if r["batch"] == cfg.batches[0]
                                                 and r.get("power_mode") == m], cfg.budget_ms, cfg.metric)
                                         .get("chosen") or {}).get("width") for m in modes}
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": write_json(out_dir / "report.json", report), "csv": write_csv(out_dir / "latency.csv", rows)}
    if cfg.plot:
        paths["plot"] = write_plot(out_dir / "latency.png", rows, cfg.metric, report.get("chosen"), cfg.budget_ms)
    return BenchResult(report=report, paths=paths)
