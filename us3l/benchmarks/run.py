"""``run_bench``: the one library call behind ``us3l bench``.

device -> runner -> (executor) -> environment fingerprint -> export or reuse artifacts (one per
width x precision) -> measure missing points (interleaved over every pair, per power mode) ->
accuracy join keyed by (width, precision) -> choice / search -> noise check (bounded re-measure of
the chosen pair and the next candidate) -> reports.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from us3l.core.accuracy import read_accuracy_file
from us3l.core.errors import ConfigError
from us3l.core.width import format_width, parse_widths, round_width

from .artifacts import ModelSource, prepare_artifacts
from .config import BenchConfig
from .devices import DeviceProfile, get_device
from .environment import fingerprint
from .lut import LatencyTable, default_cache_path
from .remote.executor import make_executor
from .report import CSV_COLUMNS, write_csv, write_json, write_plot
from .runners import RunnerOptions, TimingConfig, get_runner
from .choice import accuracy_for, accuracy_mismatch, accuracy_table, choose, pair, pareto_front
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


def _read_accuracy(cfg: BenchConfig) -> tuple[Path | None, dict | None, dict]:
    """``(accuracy file, its content, table keyed by (width, precision))``, read and validated
    before any work so that a bad table fails before anything is measured or written."""
    acc_path = cfg.accuracy
    if acc_path is None and cfg.checkpoint is not None:
        src = Path(cfg.checkpoint)  # beside a checkpoint file, inside a packed model directory
        candidate = src / "accuracy.json" if src.is_dir() else src.with_name("accuracy.json")
        acc_path = candidate if candidate.is_file() else None
    if not acc_path:
        return None, None, {}
    data = read_accuracy_file(acc_path)  # read once: provenance check, then the table
    return acc_path, data, accuracy_table(data["results"], acc_path)


def _accuracy(cfg: BenchConfig, checkpoint_hash: str | None,
              read: tuple[Path | None, dict | None, dict]) -> tuple[Path | None, str | None, dict]:
    """``(accuracy file, note why it was not joined, table keyed by (width, precision))``."""
    acc_path, data, table = read
    if not acc_path or data is None:
        return None, None, {}
    note = accuracy_mismatch(data, acc_path, checkpoint_hash, cfg.snap)
    if note:
        log.info("%s", note)  # returned in report["accuracy_note"]; the CLI prints it
        return acc_path, note, {}
    return acc_path, None, table


def default_widths(lo: float, hi: float, ladder: list[float], acc: dict) -> list[float]:
    """0.25:1.0:0.25 (within the range), plus the checkpoint's BN-bank widths, plus the accuracy
    table's widths: one extra ``us3l eval --widths`` adds a point, it never replaces the ladder."""
    base = [w for w in parse_widths("0.25:1.0:0.25", 0.0, 1.0) if lo - 1e-9 <= w <= hi + 1e-9] or [lo, hi]
    extra = [w for (w, _) in acc if lo - 1e-9 <= w <= hi + 1e-9]
    return sorted({round_width(w) for w in (*base, *ladder, *extra)})


def _join(rows: list[dict], acc: dict, has_table: bool) -> None:
    """Each row's accuracy at its own precision; unknown is said, never borrowed from FP32."""
    for r in rows:
        entry = accuracy_for(r["width"], r.get("aliases") or [], acc, r.get("precision") or "fp32") if acc else None
        r["accuracy"] = entry["accuracy"] if entry else None
        r["accuracy_source"] = ("measured" if entry else "unknown") if has_table else None


def noise_straddle(choice: dict, budget_ms: float, metric: str) -> list[dict]:
    """The chosen pair if its interval reaches above the budget, and the next candidate if its
    interval reaches below it: the pairs whose side of the budget noise could flip."""
    out = []
    for which, item in (("chosen", choice.get("chosen")), ("next", choice.get("next"))):
        ci = (item or {}).get("ci_ms", {}).get(metric) if item else None
        if not ci:
            continue
        if (which == "chosen" and ci[1] > budget_ms) or (which == "next" and ci[0] <= budget_ms):
            out.append({**item, "role": which})
    return out


def run_bench(cfg: BenchConfig, progress: ProgressFn | None = None) -> BenchResult:
    """Benchmark a width ladder at one or more precisions on a device and (with a budget) choose
    the (width, precision) pair.

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
        >>> # run_bench(BenchConfig(arch="us_resnet18_cifar", widths="0.5,1.0", precision="fp32,int8", budget_ms=5))
    """
    started = time.perf_counter()
    accuracy_read = _read_accuracy(cfg)
    from us3l.core.files import check_writable_dir

    check_writable_dir(cfg.out_dir or DEFAULT_OUT)
    if cfg.lut is not None:
        check_writable_dir(Path(cfg.lut).parent, "--lut folder")
    profile = get_device(cfg.device, cfg.devices_file)
    runner_name = resolve_runner(cfg.runner or profile.runner, profile)
    runner_cls = get_runner(runner_name)
    precisions = list(cfg.precisions or (profile.precision,))
    if runner_name == "torch" and precisions != ["fp32"]:
        raise ConfigError(f"the torch runner measures the fp32 network; precision {','.join(precisions)} needs "
                          "--runner onnxruntime (or tensorrt/trtexec on a GPU)")
    threads = cfg.threads or profile.threads
    if not threads and not profile.is_remote and profile.local_device == "cpu":  # auto: the CPUs free now
        from us3l.core.threads import choose_threads

        threads = choose_threads(0).threads
    source = ModelSource(cfg.checkpoint, cfg.arch, cfg.snap)
    out_dir = cfg.out_dir or DEFAULT_OUT
    table = LatencyTable(cfg.lut or (out_dir / "lut.json" if cfg.out_dir else default_cache_path()))
    info = _width_info(source, table, cfg.force)
    lo, hi, ladder = float(info["lo"]), float(info["hi"]), [float(w) for w in info["ladder"]]
    acc_path, acc_note, acc = _accuracy(cfg, info.get("hash"), accuracy_read)
    widths = parse_widths(cfg.widths, lo, hi) if cfg.widths else default_widths(lo, hi, ladder, acc)
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
    noise: dict | None = None
    executor = make_executor(profile, cfg.accept_new_host_key) if needs_executor else contextlib.nullcontext()
    with executor as ex:
        options = RunnerOptions(profile.local_device, precisions[0], threads, ex if needs_executor else None, extra)
        for p in precisions:
            runner_cls.check_available(dataclasses.replace(options, precision=p))
        env = runner_cls.environment(options)
        fp = fingerprint(env)
        # one artifact per (width, precision): fp16/int8 ONNX are converted from the fp32 ONNX at export
        # (int8 calibrated on real images); the torch runner measures the fp32 network itself
        artifacts = [a for p in precisions
                     for a in prepare_artifacts(source, widths, out_dir, p, table, cfg.force, progress)]
        original = (env.get("nvpmodel") or {}).get("id") if modes else None
        try:
            first_ctx = None
            for mode in modes or [None]:
                if mode is not None:
                    from .remote.jetson import set_power_mode

                    env.setdefault("power_mode_states", {})[str(mode)] = set_power_mode(ex, mode)
                ctx = MeasureContext(runner_cls, runner_name, options, timing, table, fp, profile.name,
                                     cfg.force, mode)
                first_ctx = first_ctx or ctx
                rows += measure_rows(ctx, artifacts, cfg.batches, progress)
                if cfg.search and mode == (modes[0] if modes else None):
                    from .search import search_width

                    search_out = search_width(source, ctx, lo, hi, cfg.search_step, cfg.batches[0], cfg.budget_ms,
                                              cfg.metric, out_dir, precisions[0], table, progress)
            if cfg.budget_ms is not None and search_out is None and first_ctx is not None and len(modes) <= 1:
                noise = _settle(cfg, first_ctx, artifacts, rows, acc, bool(acc_path and not acc_note), progress)
        finally:
            table.save()
            if modes and original is not None and original != modes[-1]:
                from .remote.jetson import set_power_mode

                try:
                    set_power_mode(ex, original)
                except Exception as exc:  # never mask the measurement's own error
                    log.warning("could not restore power mode %s: %s", original, exc)
    return _finish(cfg, profile, runner_name, precisions, threads, env, fp, widths, rows, search_out,
                   out_dir, started, acc_path, acc_note, acc, noise)


def _primary(rows: list[dict], cfg: BenchConfig) -> list[dict]:
    modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
    return [r for r in rows if r["batch"] == cfg.batches[0] and r.get("power_mode") == modes[0]]


def _settle(cfg: BenchConfig, ctx: MeasureContext, artifacts: list, rows: list[dict], acc: dict, has_table: bool,
            progress: ProgressFn | None) -> dict:
    """Re-measure (at most ``cfg.remeasure`` times, each with twice the timed runs) the chosen pair and
    the next candidate while noise could flip the choice; say so plainly if it still could.

    Rows are replaced in place by the longer measurement.
    """
    assert cfg.budget_ms is not None
    by_sha = {a.sha256: a for a in artifacts}
    timing, attempts = ctx.timing, 0
    while True:
        _join(rows, acc, has_table)
        choice = choose(_primary(rows, cfg), cfg.budget_ms, cfg.metric)
        straddle = noise_straddle(choice, cfg.budget_ms, cfg.metric)
        if not straddle or attempts >= cfg.remeasure:
            break
        attempts += 1
        timing = dataclasses.replace(timing, duration_s=timing.duration_s * 2,
                                     iterations=timing.iterations * 2 if timing.iterations else None)
        redo = dataclasses.replace(ctx, timing=timing, force=True)
        shas = {r["sha256"] for r in _primary(rows, cfg)
                for s in straddle if r["width"] == s["width"] and r.get("precision") == s["precision"]}
        arts = [by_sha[h] for h in shas if h in by_sha]
        log.info("re-measuring %d pair(s) whose interval straddles the budget (attempt %d/%d)", len(arts), attempts,
                 cfg.remeasure)
        fresh = {(r["sha256"], r["batch"]): r for r in measure_rows(redo, arts, [cfg.batches[0]], progress)}
        for i, r in enumerate(rows):
            new = fresh.get((r["sha256"], r["batch"]))
            if new is not None and r.get("power_mode") == ctx.power_mode:
                rows[i] = {**new, "remeasured": attempts}
    out = {"remeasured": attempts, "limit": cfg.remeasure, "within_noise": bool(straddle),
           "pairs": [{k: s[k] for k in ("role", "width", "precision", "latency_ms")} | {"ci_ms": s["ci_ms"][cfg.metric]}
                     for s in straddle]}
    if straddle:
        names = "; ".join(f"{s['role']} width {format_width(s['width'])} {s['precision']}: {cfg.metric} "
                          f"{s['latency_ms']:.3f} ms, 95% CI [{s['ci_ms'][cfg.metric][0]:.3f}, "
                          f"{s['ci_ms'][cfg.metric][1]:.3f}]" for s in straddle)
        out["message"] = (f"the choice is within noise: the {cfg.metric} interval of {names} straddles the "
                          f"{cfg.budget_ms:g} ms budget after {attempts} re-measurement(s); measure longer "
                          f"(--duration) on a quieter machine, or leave margin in the budget")
    return out


def _finish(cfg: BenchConfig, profile: DeviceProfile, runner_name: str, precisions: list[str], threads: int | None,
            env: dict, fp: str, widths: list[float], rows: list[dict], search_out: dict | None, out_dir: Path,
            started: float, acc_path: Path | None, acc_note: str | None, acc: dict,
            noise: dict | None = None) -> BenchResult:
    if search_out:
        seen = {(r["width"], r["batch"], r.get("power_mode")) for r in rows}
        rows += [r for r in search_out["probes"] if (r["width"], r["batch"], r.get("power_mode")) not in seen]
    has_table = bool(acc_path and not acc_note)
    _join(rows, acc, has_table)
    for r in rows:
        ci = (r.get("ci_ms") or {}).get(cfg.metric)
        r["ci_low_ms"], r["ci_high_ms"] = (ci[0], ci[1]) if ci else (None, None)
    order = {p: i for i, p in enumerate(precisions)}
    rows.sort(key=lambda r: (r.get("power_mode") is not None, r.get("power_mode") or 0, r["batch"],
                             order.get(r.get("precision"), 9), r["width"]))
    rows = [{**{c: r.get(c) for c in CSV_COLUMNS}, **r} for r in rows]  # canonical key order
    modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
    primary = [r for r in rows if r["batch"] == cfg.batches[0] and r.get("power_mode") == modes[0]]
    front = pareto_front(primary, cfg.metric)
    unknown = sorted({(r["width"], r["precision"]) for r in primary if r.get("accuracy_source") == "unknown"},
                     key=lambda k: (order.get(k[1], 9), k[0]))
    report = {
        "schema": "us3l-bench/1", "device": profile.name, "runner": runner_name, "precision": ",".join(precisions),
        "precisions": precisions, "threads": threads, "fingerprint": fp, "environment": env,
        "source": {"checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None, "arch": cfg.arch},
        "accuracy_file": str(acc_path) if acc_path else None, "accuracy_note": acc_note,
        "accuracy_unknown": [{"width": w, "precision": p} for w, p in unknown],
        "config": _config_dict(cfg, widths),
        "results": rows, "pareto": [pair(primary[i]) for i in front],
        "pareto_widths": [primary[i]["width"] for i in front],
    }
    if unknown:
        missing = sorted({p for _, p in unknown}, key=lambda p: order.get(p, 9))
        report["accuracy_unknown_note"] = (
            f"no measured accuracy for {len(unknown)} pair(s) ({', '.join(missing)}) in {acc_path}: shown as unknown, "
            f"not copied from fp32; measure them with 'us3l eval CKPT --artifact FILE'")
    if cfg.budget_ms is not None:
        choice = choose(primary, cfg.budget_ms, cfg.metric)
        if search_out is not None:
            if search_out["width"] is None:
                choice.update(chosen=None, reason=search_out["reason"])
            else:
                row = next(r for r in primary if r["width"] == search_out["width"])
                choice.update(chosen={**pair(row), "latency_ms": row[f"{cfg.metric}_ms"],
                                      "accuracy": row.get("accuracy"), "aliases": row.get("aliases", []),
                                      "artifact": row.get("artifact"), "width_range": search_out["width_range"]},
                              reason=search_out["reason"])
            report["search"] = {k: v for k, v in search_out.items() if k != "probes"}
        if noise is not None:
            choice["noise"] = noise
        report["chosen"] = choice.pop("chosen")
        report["choice"] = choice
        if report["chosen"] and report["chosen"].get("artifact"):
            art = Path(report["chosen"]["artifact"])
            report["deploy"] = {"artifact": str(art), "sidecar": str(art.with_suffix(".json")),
                                "width": report["chosen"]["width"], "precision": report["chosen"]["precision"]}
        if len(modes) > 1:
            report["policy"] = {str(m): (choose([r for r in rows if r["batch"] == cfg.batches[0]
                                                 and r.get("power_mode") == m], cfg.budget_ms, cfg.metric)
                                         .get("chosen") or {}).get("width") for m in modes}
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": write_json(out_dir / "report.json", report), "csv": write_csv(out_dir / "latency.csv", rows)}
    if cfg.plot:
        paths["plot"] = write_plot(out_dir / "latency.png", rows, cfg.metric, report.get("chosen"), cfg.budget_ms,
                                   title=f"{profile.name} ({runner_name}): {cfg.metric} latency, batch {cfg.batches[0]}"
                                         + (f", budget {cfg.budget_ms:g} ms" if cfg.budget_ms is not None else ""))
    return BenchResult(report=report, paths=paths)
