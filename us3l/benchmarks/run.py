"""``run_bench``: the one library call behind ``us3l bench``, driving a :class:`BenchRun`.

device -> runner -> (executor) -> environment fingerprint -> export or reuse artifacts (one per
width x precision) -> measure missing points (interleaved over every pair, per power mode) ->
accuracy join keyed by (width, precision) -> choice / search -> noise check (bounded re-measure of
the chosen pair and the next candidate) -> reports.

The run's state lives in one object (:class:`BenchRun`: configuration, device, runner, source,
lookup table, accuracy join, typed :class:`~us3l.benchmarks.rows.BenchRow` rows, search outcome,
noise check); each step is a method. Choosing works on the report form of the rows
(``BenchRow.to_dict()``), which is what ``report.json`` holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from us3l.core.accuracy import read_accuracy_file
from us3l.core.errors import ConfigError
from us3l.core.precision import Precision
from us3l.core.width import format_width, parse_widths, round_width

from .artifacts import BenchArtifact, ModelSource, prepare_artifacts
from .choice import accuracy_for, accuracy_mismatch, accuracy_table, choose, pair, pareto_front
from .config import BenchConfig
from .devices import DeviceProfile, get_device
from .environment import fingerprint
from .lut import LatencyTable, default_cache_path
from .remote.executor import make_executor
from .report import write_csv, write_json, write_plot
from .rows import BenchRow
from .runners import RunnerOptions, TimingConfig, get_runner
from .search import SearchOutcome
from .sweep import MeasureContext, ProgressFn, measure_rows

log = logging.getLogger(__name__)
IN_PROCESS = ("torch", "onnxruntime", "tensorrt")
DEFAULT_OUT = Path("us3l-bench")


@dataclass
class BenchResult:
    """What :func:`run_bench` produced: the report dict, the files written and the typed rows."""

    report: dict
    paths: dict[str, Path] = field(default_factory=dict)
    rows: list[BenchRow] = field(default_factory=list)


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


@dataclass
class AccuracyJoin:
    """The accuracy table joined to the rows, read and validated before any work (so that a bad
    table fails before anything is measured or written).

    Attributes:
        path: the table's file (``None``: no table). data: its content.
        table: ``{(width, precision): entry}`` (emptied when the table does not describe these networks).
        note: why the table was not joined (``None``: joined, or no table).
    """

    path: Path | None = None
    data: dict | None = None
    table: dict[tuple[float, str], dict] = field(default_factory=dict)
    note: str | None = None

    @classmethod
    def read(cls, cfg: BenchConfig) -> AccuracyJoin:
        """``--accuracy FILE``, else ``accuracy.json`` beside the checkpoint (or inside a packed directory)."""
        path = cfg.accuracy
        if path is None and cfg.checkpoint is not None:
            src = Path(cfg.checkpoint)
            candidate = src / "accuracy.json" if src.is_dir() else src.with_name("accuracy.json")
            path = candidate if candidate.is_file() else None
        if not path:
            return cls()
        data = read_accuracy_file(path)  # read once: provenance check, then the table
        return cls(Path(path), data, accuracy_table(data["results"], Path(path)))

    def check(self, checkpoint_hash: str | None, divisor: int) -> None:
        """Refuse (with :attr:`note`) a table of another checkpoint or of other-divisor networks."""
        if self.path is None or self.data is None:
            return
        self.note = accuracy_mismatch(self.data, self.path, checkpoint_hash, divisor)
        if self.note:
            log.info("%s", self.note)  # returned in report["accuracy_note"]; the CLI prints it
            self.table = {}

    @property
    def has_table(self) -> bool:
        """A table was found and describes the measured networks."""
        return self.path is not None and self.note is None

    def join(self, rows: list[BenchRow]) -> None:
        """Each row's accuracy at its own precision; unknown is said, never borrowed from FP32."""
        for r in rows:
            entry = accuracy_for(r.width, r.aliases, self.table, r.precision) if self.table else None
            r.accuracy = entry["accuracy"] if entry else None
            r.accuracy_source = ("measured" if entry else "unknown") if self.has_table else None


@dataclass
class NoiseCheck:
    """Outcome of re-measuring the pairs whose interval straddles the budget.

    Attributes:
        remeasured / limit: re-measurements made, and the most allowed (``--remeasure``).
        within_noise: the choice could still flip with noise. pairs: the straddling pairs.
        message: what to do about it (only when ``within_noise``).
    """

    remeasured: int
    limit: int
    within_noise: bool
    pairs: list[dict]
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``report.json``'s ``choice.noise`` entry."""
        out: dict[str, Any] = {"remeasured": self.remeasured, "limit": self.limit, "within_noise": self.within_noise,
                               "pairs": self.pairs}
        if self.message is not None:
            out["message"] = self.message
        return out


def default_widths(lo: float, hi: float, ladder: list[float], acc: dict) -> list[float]:
    """0.25:1.0:0.25 (within the range), plus the checkpoint's BN-bank widths, plus the accuracy
    table's widths: one extra ``us3l eval --widths`` adds a point, it never replaces the ladder."""
    base = [w for w in parse_widths("0.25:1.0:0.25", 0.0, 1.0) if lo - 1e-9 <= w <= hi + 1e-9] or [lo, hi]
    extra = [w for (w, _) in acc if lo - 1e-9 <= w <= hi + 1e-9]
    return sorted({round_width(w) for w in (*base, *ladder, *extra)})


def noise_straddle(choice: dict, budget_ms: float, metric: str) -> list[dict]:
    """The chosen pair if its interval reaches above the budget, and the next candidate if its
    interval reaches below it: the pairs whose side of the budget noise could flip."""
    out = []
    for which, item in (("chosen", choice.get("chosen")), ("next", choice.get("next"))):
        if not item:
            continue
        ci = item.get("ci_ms", {}).get(metric)
        if not ci:
            continue
        if (which == "chosen" and ci[1] > budget_ms) or (which == "next" and ci[0] <= budget_ms):
            out.append({**item, "role": which})
    return out


def primary_rows(rows: list[BenchRow], batch: int) -> list[BenchRow]:
    """The rows a choice is made on: the first batch size, in the first power mode seen."""
    modes = list(dict.fromkeys(r.power_mode for r in rows))
    return [r for r in rows if r.batch == batch and r.power_mode == modes[0]]


class BenchRun:
    """The state of one ``us3l bench`` run; :func:`run_bench` drives its steps.

    Construction resolves and validates everything that can fail before work starts (accuracy
    table, output folders, device, runner, precisions, width range, power modes);
    :meth:`measure` exports and times (and searches, and settles a noisy choice);
    :meth:`report` builds the ``report.json`` dict; :meth:`write` writes the files.
    """

    def __init__(self, cfg: BenchConfig, progress: ProgressFn | None = None) -> None:
        from us3l.core.files import check_writable_dir

        self.cfg, self.progress = cfg, progress
        self.started = time.perf_counter()
        self.accuracy = AccuracyJoin.read(cfg)
        check_writable_dir(cfg.out_dir or DEFAULT_OUT)
        if cfg.lut is not None:
            check_writable_dir(Path(cfg.lut).parent, "--lut folder")
        self.profile = get_device(cfg.device, cfg.devices_file)
        self.runner_name = resolve_runner(cfg.runner or self.profile.runner, self.profile)
        self.runner_cls = get_runner(self.runner_name)
        self.precisions = list(cfg.precisions or (Precision.parse(self.profile.precision),))
        if self.runner_name == "torch" and any(p.reduced for p in self.precisions):
            raise ConfigError(f"the torch runner measures the fp32 network; precision {','.join(self.precisions)} "
                              "needs --runner onnxruntime (or tensorrt/trtexec on a GPU)")
        self.threads = cfg.threads or self.profile.threads
        self.source: Any = None  # ModelSource, or a SwitchableSource for a switchable file
        if cfg.artifact is None:
            self.source = ModelSource(cfg.checkpoint, cfg.arch, cfg.snap)
        if cfg.artifact is not None:
            self._switchable_source()
        self.out_dir = cfg.out_dir or DEFAULT_OUT
        self.table = LatencyTable(cfg.lut or (self.out_dir / "lut.json" if cfg.out_dir else default_cache_path()))
        info = _width_info(self.source, self.table, cfg.force)
        self.lo, self.hi = float(info["lo"]), float(info["hi"])
        ladder = [float(w) for w in info["ladder"]]
        self.accuracy.check(info.get("hash"), cfg.snap)
        if cfg.artifact is not None:
            self.widths = self.source.widths(cfg.widths)
        else:
            self.widths = (parse_widths(cfg.widths, self.lo, self.hi) if cfg.widths
                           else default_widths(self.lo, self.hi, ladder, self.accuracy.table))
        self.timing = TimingConfig(warmup_ms=cfg.warmup_ms, duration_s=cfg.duration_s, iterations=cfg.iterations,
                                   rounds=cfg.rounds, idle_gap_ms=cfg.idle_gap_ms)
        p = self.profile
        self.extra = {"trtexec": p.trtexec, "python": p.python, "jetson": p.jetson,
                      "tegrastats": p.tegrastats if p.jetson else None,
                      "trt_version": _version_tuple(p.trt_version), "max_batch": max(cfg.batches)}
        self.modes = list(cfg.power_modes or p.power_modes)
        if self.modes and not p.jetson:
            raise ConfigError(f"--power-modes needs a Jetson device; {p.name!r} is not marked jetson = true")
        self.env: dict = {}
        self.fingerprint = ""
        self.rows: list[BenchRow] = []
        self.search: SearchOutcome | None = None
        self.noise: NoiseCheck | None = None

    def _switchable_source(self) -> None:
        """A switchable file as the source: its widths, its precision, its own accuracy per index."""
        from .choice import accuracy_table
        from .switchable import SwitchableSource

        cfg = self.cfg
        assert cfg.artifact is not None
        if self.runner_name == "torch":
            raise ConfigError("the torch runner measures a checkpoint's network; a switchable file runs in onnxruntime, "
                              "tensorrt or trtexec (--runner)")
        self.source = SwitchableSource(Path(cfg.artifact))
        if cfg.precisions is None and self.runner_name == "onnxruntime":
            self.precisions = [self.source.precision]
        rows = self.source.accuracy_rows()
        if cfg.accuracy is None and rows:
            data = {"checkpoint": self.source.checkpoint_hash, "protocol": {}, "results": rows}
            self.accuracy = AccuracyJoin(Path(cfg.artifact), data, accuracy_table(rows, Path(cfg.artifact)))

    @property
    def needs_executor(self) -> bool:
        """The runner runs commands (trtexec, the remote agent) rather than in this process."""
        return self.runner_name not in IN_PROCESS

    # -- measuring ---------------------------------------------------------------------------------

    def measure(self) -> None:
        """Fingerprint the target, export or reuse the artifacts, time every (artifact, batch) per
        power mode, search, and settle a choice that noise could flip. The lookup table is saved
        and the original power mode restored whatever happens."""
        cfg = self.cfg
        executor = make_executor(self.profile, cfg.accept_new_host_key) if self.needs_executor \
            else contextlib.nullcontext()
        with executor as ex:
            options = RunnerOptions(self.profile.local_device, self.precisions[0], self.threads,
                                    ex if self.needs_executor else None, self.extra)
            for p in self.precisions:
                self.runner_cls.check_available(dataclasses.replace(options, precision=p))
            self.env = self.runner_cls.environment(options)
            self.fingerprint = fingerprint(self.env)
            artifacts = self.prepare_artifacts()
            original = (self.env.get("nvpmodel") or {}).get("id") if self.modes else None
            try:
                first_ctx = self._sweep_modes(ex, options, artifacts)
                if cfg.budget_ms is not None and self.search is None and first_ctx is not None \
                        and len(self.modes) <= 1:
                    self.noise = self.settle(first_ctx, artifacts)
            finally:
                self.table.save()
                self._restore_power_mode(ex, original)

    def prepare_artifacts(self) -> list[BenchArtifact]:
        """One artifact per (width, precision): fp16/int8 ONNX are converted from the fp32 ONNX at
        export (int8 calibrated on real images); the torch runner measures the fp32 network itself."""
        cfg = self.cfg
        if cfg.artifact is not None:
            from .switchable import switchable_artifacts

            return [a for p in self.precisions
                    for a in switchable_artifacts(self.source, self.widths, Precision.parse(p),
                                                  self.runner_name == "onnxruntime", self.out_dir)]
        return [a for p in self.precisions
                for a in prepare_artifacts(self.source, self.widths, self.out_dir, p, self.table, cfg.force,
                                           self.progress)]

    def _context(self, options: RunnerOptions, mode: int | None) -> MeasureContext:
        return MeasureContext(self.runner_cls, self.runner_name, options, self.timing, self.table, self.fingerprint,
                              self.profile.name, self.cfg.force, mode)

    def _sweep_modes(self, ex: Any, options: RunnerOptions, artifacts: list[BenchArtifact]) -> MeasureContext | None:
        """Measure every artifact in each power mode (or the current one); search in the first.

        Returns:
            The first mode's measuring context (the noise check re-measures with it).
        """
        cfg = self.cfg
        first_ctx = None
        modes: list[int | None] = [*self.modes] or [None]
        for mode in modes:
            if mode is not None:
                from .remote.jetson import set_power_mode

                self.env.setdefault("power_mode_states", {})[str(mode)] = set_power_mode(ex, mode)
            ctx = self._context(options, mode)
            first_ctx = first_ctx or ctx
            self.rows += measure_rows(ctx, artifacts, cfg.batches, self.progress)
            if cfg.search and mode == (self.modes[0] if self.modes else None):
                from .search import search_width

                assert cfg.budget_ms is not None  # BenchConfig: --search needs --budget-ms
                self.search = search_width(self.source, ctx, self.lo, self.hi, cfg.search_step, cfg.batches[0],
                                           cfg.budget_ms, cfg.metric, self.out_dir, self.precisions[0], self.table,
                                           self.progress)
        return first_ctx

    def _restore_power_mode(self, ex: Any, original: Any) -> None:
        if not self.modes or original is None or original == self.modes[-1]:
            return
        from .remote.jetson import set_power_mode

        try:
            set_power_mode(ex, original)
        except Exception as exc:  # never mask the measurement's own error
            log.warning("could not restore power mode %s: %s", original, exc)

    def settle(self, ctx: MeasureContext, artifacts: list[BenchArtifact]) -> NoiseCheck:
        """Re-measure (at most ``cfg.remeasure`` times, each with twice the timed runs) the chosen pair
        and the next candidate while noise could flip the choice; say so plainly if it still could.

        Rows are replaced in place by the longer measurement.
        """
        cfg = self.cfg
        assert cfg.budget_ms is not None
        by_sha = {a.sha256: a for a in artifacts}
        timing, attempts = ctx.timing, 0
        while True:
            self.accuracy.join(self.rows)
            choice = choose([r.to_dict() for r in primary_rows(self.rows, cfg.batches[0])], cfg.budget_ms, cfg.metric)
            straddle = noise_straddle(choice, cfg.budget_ms, cfg.metric)
            if not straddle or attempts >= cfg.remeasure:
                break
            attempts += 1
            timing = dataclasses.replace(timing, duration_s=timing.duration_s * 2,
                                         iterations=timing.iterations * 2 if timing.iterations else None)
            redo = dataclasses.replace(ctx, timing=timing, force=True)
            shas = {r.sha256 for r in primary_rows(self.rows, cfg.batches[0])
                    for s in straddle if r.width == s["width"] and r.precision == s["precision"]}
            arts = [by_sha[h] for h in sorted(h for h in shas if h is not None) if h in by_sha]
            log.info("re-measuring %d pair(s) whose interval straddles the budget (attempt %d/%d)", len(arts),
                     attempts, cfg.remeasure)
            fresh = {(r.sha256, r.batch): r for r in measure_rows(redo, arts, [cfg.batches[0]], self.progress)}
            for i, r in enumerate(self.rows):
                new = fresh.get((r.sha256, r.batch))
                if new is not None and r.power_mode == ctx.power_mode:
                    self.rows[i] = new.replace(remeasured=attempts)
        pairs = [{k: s[k] for k in ("role", "width", "precision", "latency_ms")} | {"ci_ms": s["ci_ms"][cfg.metric]}
                 for s in straddle]
        message = None
        if straddle:
            names = "; ".join(f"{s['role']} width {format_width(s['width'])} {s['precision']}: {cfg.metric} "
                              f"{s['latency_ms']:.3f} ms, 95% CI [{s['ci_ms'][cfg.metric][0]:.3f}, "
                              f"{s['ci_ms'][cfg.metric][1]:.3f}]" for s in straddle)
            message = (f"the choice is within noise: the {cfg.metric} interval of {names} straddles the "
                       f"{cfg.budget_ms:g} ms budget after {attempts} re-measurement(s); measure longer "
                       f"(--duration) on a quieter machine, or leave margin in the budget")
        return NoiseCheck(attempts, cfg.remeasure, bool(straddle), pairs, message)

    # -- reporting ---------------------------------------------------------------------------------

    def finish_rows(self) -> list[BenchRow]:
        """The report's rows: measured rows plus the search probes not among them, accuracy joined,
        the budget metric's interval filled in, sorted by power mode, batch, precision and width."""
        cfg = self.cfg
        rows = list(self.rows)
        if self.search is not None:
            seen = {r.point_key for r in rows}
            rows += [r for r in self.search.probes if r.point_key not in seen]
        self.accuracy.join(rows)
        for r in rows:
            ci = (r.ci_ms or {}).get(cfg.metric)
            r.ci_low_ms, r.ci_high_ms = (ci[0], ci[1]) if ci else (None, None)
        order: dict[str, int] = {p.value: i for i, p in enumerate(self.precisions)}
        rows.sort(key=lambda r: (r.power_mode is not None, r.power_mode or 0, r.batch, order.get(r.precision, 9),
                                 r.width))
        self.rows = rows
        return rows

    def report(self) -> dict[str, Any]:
        """The ``report.json`` dict (rows in :meth:`BenchRow.to_dict` form)."""
        cfg, acc = self.cfg, self.accuracy
        rows = [r.to_dict() for r in self.finish_rows()]
        order: dict[str, int] = {p.value: i for i, p in enumerate(self.precisions)}
        modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
        primary = [r for r in rows if r["batch"] == cfg.batches[0] and r.get("power_mode") == modes[0]]
        front = pareto_front(primary, cfg.metric)
        unknown = sorted({(r["width"], r["precision"]) for r in primary if r.get("accuracy_source") == "unknown"},
                         key=lambda k: (order.get(k[1], 9), k[0]))
        report: dict[str, Any] = {
            "schema": "us3l-bench/1", "device": self.profile.name, "runner": self.runner_name,
            "precision": ",".join(self.precisions), "precisions": self.precisions, "threads": self.threads,
            "fingerprint": self.fingerprint, "environment": self.env,
            "source": {"checkpoint": str(cfg.checkpoint) if cfg.checkpoint else None, "arch": cfg.arch,
                       **({"switchable": str(cfg.artifact)} if cfg.artifact is not None else {})},
            "accuracy_file": str(acc.path) if acc.path else None, "accuracy_note": acc.note,
            "accuracy_unknown": [{"width": w, "precision": p} for w, p in unknown],
            "config": _config_dict(cfg, self.widths),
            "results": rows, "pareto": [pair(primary[i]) for i in front],
            "pareto_widths": [primary[i]["width"] for i in front],
        }
        if unknown:
            missing = sorted({p for _, p in unknown}, key=lambda p: order.get(p, 9))
            report["accuracy_unknown_note"] = (
                f"no measured accuracy for {len(unknown)} pair(s) ({', '.join(missing)}) in {acc.path}: shown as "
                f"unknown, not copied from fp32; measure them with 'us3l eval CKPT --artifact FILE'")
        if cfg.budget_ms is not None:
            self._add_choice(report, rows, primary, modes)
        report["elapsed_s"] = round(time.perf_counter() - self.started, 3)
        return report

    def _add_choice(self, report: dict[str, Any], rows: list[dict], primary: list[dict], modes: list[Any]) -> None:
        """``chosen``, ``choice`` (with the search and noise outcomes), ``deploy`` and, over several
        power modes, the per-mode ``policy``."""
        cfg = self.cfg
        assert cfg.budget_ms is not None
        choice = choose(primary, cfg.budget_ms, cfg.metric)
        if self.search is not None:
            found = self.search
            if found.width is None:
                choice.update(chosen=None, reason=found.reason)
            else:
                row = next(r for r in primary if r["width"] == found.width)
                choice.update(chosen={**pair(row), "latency_ms": row[f"{cfg.metric}_ms"],
                                      "accuracy": row.get("accuracy"), "aliases": row.get("aliases", []),
                                      "artifact": row.get("artifact"), "width_range": found.width_range},
                              reason=found.reason)
            report["search"] = found.to_dict()
        if self.noise is not None:
            choice["noise"] = self.noise.to_dict()
        report["chosen"] = choice.pop("chosen")
        report["choice"] = choice
        chosen = report["chosen"]
        if chosen and chosen.get("artifact"):
            art = Path(chosen["artifact"])
            report["deploy"] = {"artifact": str(art), "sidecar": str(art.with_suffix(".json")),
                                "width": chosen["width"], "precision": chosen["precision"]}
            if cfg.artifact is not None:  # one switchable file: the device feeds this index
                from us3l.exporters.switchable import index_for

                report["deploy"].update(switchable=str(cfg.artifact),
                                        width_index=index_for(self.source.table, chosen["width"]))
        if len(modes) > 1:
            report["policy"] = {str(m): (choose([r for r in rows if r["batch"] == cfg.batches[0]
                                                 and r.get("power_mode") == m], cfg.budget_ms, cfg.metric)
                                         .get("chosen") or {}).get("width") for m in modes}

    def write(self, report: dict[str, Any]) -> dict[str, Path]:
        """``report.json``, ``latency.csv`` and (with ``plot``) ``latency.png`` under the output folder."""
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rows = report["results"]
        paths = {"report": write_json(self.out_dir / "report.json", report),
                 "csv": write_csv(self.out_dir / "latency.csv", rows)}
        if cfg.plot:
            title = (f"{self.profile.name} ({self.runner_name}): {cfg.metric} latency, batch {cfg.batches[0]}"
                     + (f", budget {cfg.budget_ms:g} ms" if cfg.budget_ms is not None else ""))
            paths["plot"] = write_plot(self.out_dir / "latency.png", rows, cfg.metric, report.get("chosen"),
                                       cfg.budget_ms, title=title)
        return paths


def run_bench(cfg: BenchConfig, progress: ProgressFn | None = None) -> BenchResult:
    """Benchmark a width ladder at one or more precisions on a device and (with a budget) choose
    the (width, precision) pair.

    Args:
        cfg: the frozen configuration.
        progress: ``fn(done, total, description)`` called as points are measured.

    Returns:
        :class:`BenchResult` with the report (also written as ``report.json``, ``latency.csv`` and
        ``latency.png`` under the output dir) and the typed rows.

    Raises:
        UnknownNameError: unknown device or runner. ConfigError: bad profile or options.
        RemoteError: ssh problems. BackendUnavailableError: missing backend.

    Examples:
        >>> # run_bench(BenchConfig(arch="us_resnet18_cifar", widths="0.5,1.0", precision="fp32,int8", budget_ms=5))
    """
    run = BenchRun(cfg, progress)
    run.measure()
    report = run.report()
    return BenchResult(report=report, paths=run.write(report), rows=run.rows)
