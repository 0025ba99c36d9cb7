"""``run_bench``: the one library call behind ``us3l bench``, driving a :class:`BenchRun`.

device -> runner -> (executor) -> environment fingerprint -> export or reuse artifacts (one per
width x precision) -> measure missing points (interleaved over every pair, per power mode) ->
stability check (rows whose spread says the machine was busy are re-measured once; what stays
noisy marks the run unstable, :mod:`us3l.benchmarks.stability`) -> accuracy join keyed by (width,
precision) -> choice / search -> noise check (bounded re-measure of the chosen pair and the next
candidate) -> reports.

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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from us3l.core.accuracy import ACCURACY_FILE, PROTOCOLS, normalize_rows, read_accuracy_file
from us3l.core.errors import ConfigError
from us3l.core.files import relative_path
from us3l.core.heartbeat import stage
from us3l.core.precision import Precision
from us3l.core.width import format_width, parse_widths, round_width

from .artifacts import BenchArtifact, ModelSource, prepare_artifacts
from .choice import accuracy_mismatch, accuracy_table, choose, pair, pareto_front
from .config import BenchConfig
from .devices import DeviceProfile, get_device
from .environment import fingerprint
from .lut import LatencyTable, default_cache_path
from .remote.executor import make_executor
from .report import write_csv, write_json, write_plot
from .rows import BenchRow
from .runners import RunnerOptions, TimingConfig, get_runner
from .stability import MIN_RUNS, Stability, busy_message, describe, is_noisy, noisy_rows
from .sweep import MeasureContext, ProgressFn, measure_rows

if TYPE_CHECKING:
    from .search import SearchOutcome  # search imports torch (slicing): only when a run searches

log = logging.getLogger(__name__)
IN_PROCESS = ("torch", "onnxruntime", "tensorrt")
#: ``fn(checkpoint, artifact files, PyTorch widths, accuracy table)``: measures and merges rows
AccuracyMeasurer = Callable[[Path, list[Path], list[float], Path], None]
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
    if info is None or "hash" not in info or "states" not in info:
        info = table.sources[key] = source.width_info()
    return info


def _config_dict(cfg: BenchConfig, widths: list[float], here: Path) -> dict:
    """The options of the run; a path is named from ``here``, the folder the report is written to."""
    data = {k: (relative_path(v, here) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    data["batches"], data["power_modes"], data["widths_resolved"] = list(cfg.batches), list(cfg.power_modes), widths
    return data


@dataclass
class AccuracyJoin:
    """The accuracy table joined to the rows by the exact file timed, read and validated before any
    work (so that a bad table fails before anything is measured or written).

    A row of ``report.json`` gets the accuracy of an ``accuracy.json`` row whose ``sha256`` is the
    timed file's (ONNX Runtime, TensorRT and trtexec runners: the artifact's sha256; the ``torch``
    runner times the PyTorch network, so it takes PyTorch rows of the same checkpoint state, width,
    outputs and divisor). A file without a row has ``unknown`` accuracy: never another file's
    figure, never another precision's or outputs kind's.

    Attributes:
        path: the table's file (``None``: no table). data: its content.
        by_sha: ``{sha256: [rows]}`` (emptied when the table describes another checkpoint).
        note: why the table was not joined (``None``: joined, or no table).
        states: ``{outputs: sha256}`` of the checkpoint's PyTorch states (for the torch runner).
    """

    path: Path | None = None
    data: dict | None = None
    by_sha: dict[str, list[dict]] = field(default_factory=dict)
    note: str | None = None
    states: dict[str, str] = field(default_factory=dict)
    divisor: int = 8

    @classmethod
    def read(cls, cfg: BenchConfig) -> AccuracyJoin:
        """``--accuracy FILE``, else ``accuracy.json`` beside the checkpoint (or inside a packed directory)."""
        path = accuracy_path(cfg)
        if path is None or not path.is_file():
            return cls(path=None)
        data = read_accuracy_file(path)  # read once: provenance check, then the table
        accuracy_table(data["results"], path)  # every row has an accuracy value
        return cls(path, data, _index(data))

    def check(self, checkpoint_hash: str | None, divisor: int, states: dict[str, str] | None = None) -> None:
        """Refuse (with :attr:`note`) a table of another checkpoint or of other-divisor networks."""
        self.states, self.divisor = dict(states or {}), divisor
        if self.path is None or self.data is None:
            return
        self.note = accuracy_mismatch(self.data, self.path, checkpoint_hash, divisor)
        if self.note:
            log.info("%s", self.note)  # returned in report["accuracy_note"]; the CLI prints it
            self.by_sha = {}

    def reload(self) -> None:
        """Read the table again (after ``--measure-accuracy`` added rows)."""
        if self.path is not None and self.path.is_file():
            self.data = read_accuracy_file(self.path)
            if self.note is None:
                self.by_sha = _index(self.data)

    @property
    def has_table(self) -> bool:
        """A table was found and describes the measured networks."""
        return self.path is not None and self.note is None

    @property
    def widths(self) -> list[float]:
        """Widths the table has rows for (bench's default ladder includes them)."""
        if self.data is None or self.note is not None:
            return []
        return sorted({round_width(r["width"]) for r in self.data["results"]})

    def entry(self, row: BenchRow) -> dict | None:
        """The accuracy row measured on exactly what ``row`` timed, or ``None``."""
        if row.runner == "torch":  # the PyTorch network of this checkpoint state at this width
            state = self.states.get(row.outputs or "features")
            widths = {round_width(w) for w in (row.width, *row.aliases)}
            found = [r for r in self.by_sha.get(state or "", []) if r.get("source", "pytorch") == "pytorch"
                     and round_width(r["width"]) in widths and r.get("precision", "fp32") == row.precision
                     and int((r.get("details") or {}).get("divisor", 8)) == self.divisor]
        else:  # a switchable file measured as it is: sha256 "<file hash>#<width_index>"
            sha, _, index = (row.sha256 or "").partition("#")
            found = [r for r in self.by_sha.get(sha, []) if r.get("source") == "artifact"
                     and (not index or r.get("width_index") == int(index))]
        found = [r for r in found if r.get("outputs", "features") == (row.outputs or "features")]
        return min(found, key=lambda r: PROTOCOLS.index(r["protocol"])) if found else None

    def join(self, rows: list[BenchRow]) -> None:
        """Each row's accuracy measured on its own file; ``unknown`` when there is none."""
        for r in rows:
            entry = self.entry(r) if self.by_sha else None
            r.accuracy = float(entry[entry["protocol"]]) if entry else None
            r.accuracy_protocol = entry["protocol"] if entry else None
            r.accuracy_source = ("measured" if entry else "unknown") if self.has_table else None


def accuracy_path(cfg: BenchConfig) -> Path | None:
    """The accuracy table bench reads (and ``--measure-accuracy`` writes): ``--accuracy FILE``, else
    ``accuracy.json`` beside the checkpoint (inside a packed directory); ``None`` for ``--arch``."""
    if cfg.accuracy is not None:
        return Path(cfg.accuracy)
    if cfg.artifact is not None:  # a switchable file: the table beside it ('us3l eval CKPT --artifact FILE -o ...')
        return Path(cfg.artifact).with_name(ACCURACY_FILE)
    if cfg.checkpoint is None:
        return None
    src = Path(cfg.checkpoint)
    return src / ACCURACY_FILE if src.is_dir() else src.with_name(ACCURACY_FILE)


def _index(data: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in normalize_rows(data["results"]):
        if r.get("sha256"):
            out.setdefault(r["sha256"], []).append(r)
    return out


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


def default_widths(lo: float, hi: float, ladder: list[float], acc: Any) -> list[float]:
    """0.25:1.0:0.25 (within the range), plus the checkpoint's BN-bank widths, plus the accuracy
    table's widths (``acc``: widths, or a table keyed by ``(width, precision)``): one extra
    ``us3l eval --widths`` adds a point, it never replaces the ladder."""
    base = [w for w in parse_widths("0.25:1.0:0.25", 0.0, 1.0) if lo - 1e-9 <= w <= hi + 1e-9] or [lo, hi]
    table_widths = [k[0] if isinstance(k, tuple) else float(k) for k in acc]
    extra = [w for w in table_widths if lo - 1e-9 <= w <= hi + 1e-9]
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

    def __init__(self, cfg: BenchConfig, progress: ProgressFn | None = None,
                 measure_accuracy: AccuracyMeasurer | None = None) -> None:
        from us3l.core.files import check_writable_dir

        self.cfg, self.progress, self.measurer = cfg, progress, measure_accuracy
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
        if not self.threads and not self.profile.is_remote and self.profile.local_device == "cpu":
            from us3l.core.threads import choose_threads  # auto: one thread per CPU other processes leave idle

            self.threads = choose_threads(0).threads
        self.source: Any = None  # ModelSource, or a SwitchableSource for a switchable file
        if cfg.artifact is None:
            self.source = ModelSource(cfg.checkpoint, cfg.arch, cfg.snap)
        else:
            self._switchable_source()
        self.out_dir = cfg.out_dir or DEFAULT_OUT
        self.table = LatencyTable(cfg.lut or (self.out_dir / "lut.json" if cfg.out_dir else default_cache_path()))
        info = self.info = _width_info(self.source, self.table, cfg.force)
        self.lo, self.hi = float(info["lo"]), float(info["hi"])
        ladder = [float(w) for w in info["ladder"]]
        # what is timed is what ships: a task checkpoint's classifier (logits), else the backbone's features
        self.outputs = cfg.outputs or ("logits" if info.get("classifier") else "features")
        if self.outputs != "features" and cfg.checkpoint is not None and not info.get("classifier"):
            raise ConfigError(f"--outputs {self.outputs} needs a classifier; {cfg.checkpoint} has none (fine-tune it "
                              "with 'us3l finetune', or time its features with --outputs features)")
        if cfg.artifact is not None:  # a switchable file returns what it was exported with
            if cfg.outputs and cfg.outputs != self.source.outputs:
                raise ConfigError(f"{Path(cfg.artifact).name} outputs {self.source.outputs}; --outputs {cfg.outputs} "
                                  "needs another export (us3l export CKPT --switchable --outputs ...)")
            self.outputs = self.source.outputs
        else:
            self.source = dataclasses.replace(self.source, outputs=self.outputs)
        if cfg.measure_accuracy and cfg.artifact is not None:
            raise ConfigError("--measure-accuracy evaluates a checkpoint's files; measure a switchable file with "
                              "'us3l eval CKPT --artifact FILE -o TABLE' and pass --accuracy TABLE")
        if cfg.measure_accuracy:
            if self.measurer is None:
                raise ConfigError("--measure-accuracy needs the evaluator (run bench through us3l.bench or the CLI)")
            if cfg.checkpoint is None:
                raise ConfigError("--measure-accuracy needs a checkpoint (an untrained --arch has no accuracy)")
            if not info.get("has_dataset"):
                raise ConfigError(f"--measure-accuracy needs the data; {cfg.checkpoint} records no dataset "
                                  "(measure its files with 'us3l eval CKPT --artifact FILE --data NAME')")
        self.accuracy.check(*self._join_facts())
        if cfg.artifact is not None:
            self.widths = self.source.widths(cfg.widths)
        else:
            self.widths = (parse_widths(cfg.widths, self.lo, self.hi) if cfg.widths
                           else default_widths(self.lo, self.hi, ladder, self.accuracy.widths))
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
        self.stability: Stability | None = None

    def _switchable_source(self) -> None:
        """A switchable file as the source: its widths, its precision and its outputs."""
        from .switchable import SwitchableSource

        cfg = self.cfg
        assert cfg.artifact is not None
        if self.runner_name == "torch":
            raise ConfigError("the torch runner measures a checkpoint's network; a switchable file runs in onnxruntime, "
                              "tensorrt or trtexec (--runner)")
        self.source = SwitchableSource(Path(cfg.artifact))
        if cfg.precisions is None and self.runner_name == "onnxruntime":
            self.precisions = [self.source.precision]

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
            with self.phase("exporting") as report:
                artifacts = self.prepare_artifacts(report)
            if cfg.measure_accuracy:
                self.measure_accuracy(artifacts)
            original = (self.env.get("nvpmodel") or {}).get("id") if self.modes else None
            try:
                first_ctx = self._sweep_modes(ex, options, artifacts)
                if first_ctx is not None:
                    self.stability = self.check_stability(first_ctx, artifacts)
                if cfg.budget_ms is not None and self.search is None and first_ctx is not None \
                        and len(self.modes) <= 1:
                    with self.phase("re-measuring near the budget") as report:
                        self.noise = self.settle(first_ctx, artifacts, report)
            finally:
                self.table.save()
                self._restore_power_mode(ex, original)

    def prepare_artifacts(self, progress: ProgressFn | None = None) -> list[BenchArtifact]:
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
                                           progress or self.progress)]

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[ProgressFn]:
        """A named stage of the run (exporting, timing, re-measuring): its own count and time estimate
        in the CLI's bar and plain lines; the caller's ``progress`` still gets every update."""
        with stage(name) as current:

            def report(done: int, total: int, message: str) -> None:
                current.update(done, total, message)
                if self.progress:
                    self.progress(done, total, message)

            yield report

    def check_stability(self, ctx: MeasureContext, artifacts: list[BenchArtifact]) -> Stability:
        """Re-measure once every row of the first power mode whose spread says the machine was busy
        (:mod:`us3l.benchmarks.stability`); what stays noisy makes the run unstable. A noisy point
        from the lookup table is not measured again (a cached run measures nothing): it is
        reported as it is, ``--force`` measures it afresh."""
        cfg = self.cfg
        result = Stability({"max_cov": cfg.max_cov, "max_p95_over_p50": cfg.max_tail, "min_runs": MIN_RUNS})
        by_sha = {a.sha256: a for a in artifacts}
        noisy = [i for i in noisy_rows(self.rows, cfg.max_cov, cfg.max_tail) if self.rows[i].power_mode == ctx.power_mode]
        cached = [i for i in noisy if self.rows[i].cached]
        idx = [i for i in noisy if not self.rows[i].cached and self.rows[i].sha256 in by_sha]
        result.unstable = [{**describe(self.rows[i]), "cached": True} for i in cached]
        if not idx:
            return self._unstable_message(result, ctx)
        result.remeasured = [describe(self.rows[i]) for i in idx]
        shas = sorted({str(self.rows[i].sha256) for i in idx})
        batches = sorted({self.rows[i].batch for i in idx})
        log.info("re-measuring %d noisy row(s) (CoV > %g or p95/p50 > %g)", len(idx), cfg.max_cov, cfg.max_tail)
        with self.phase("re-measuring noisy rows") as report:
            fresh = {(r.sha256, r.batch): r
                     for r in measure_rows(dataclasses.replace(ctx, force=True), [by_sha[h] for h in shas], batches,
                                           report)}
        for i in idx:
            new = fresh.get((self.rows[i].sha256, self.rows[i].batch))
            if new is not None:
                self.rows[i] = new.replace(remeasured=1)
        result.unstable += [describe(self.rows[i]) for i in idx if is_noisy(self.rows[i], cfg.max_cov, cfg.max_tail)]
        return self._unstable_message(result, ctx)

    def _unstable_message(self, result: Stability, ctx: MeasureContext) -> Stability:
        if result.unstable:
            measured = [r for r in self.rows if r.power_mode == ctx.power_mode]
            result.message = busy_message(result.unstable, len(measured), self.cfg.budget_ms is not None)
            log.info("%s", result.message)
        return result

    def measure_accuracy(self, artifacts: list[BenchArtifact]) -> None:
        """``--measure-accuracy``: evaluate every file about to be timed that the table has no row
        for (all of them with ``--force``), on the checkpoint's data, and merge the rows into the
        table (tables only grow); then join again. The ``torch`` runner times the PyTorch network:
        its widths are measured in PyTorch."""
        assert self.measurer is not None
        path = accuracy_path(self.cfg)
        assert path is not None
        if self.runner_name == "torch":
            done = {r["width"] for rows in self.accuracy.by_sha.values() for r in rows
                    if r.get("sha256") == self.accuracy.states.get(self.outputs) and r.get("source") == "pytorch"}
            todo_widths = sorted({a.width for a in artifacts if self.cfg.force or a.width not in done})
            if todo_widths:
                self.measurer(Path(self.cfg.checkpoint or ""), [], todo_widths, path)
        else:
            have = set(self.accuracy.by_sha)
            todo = [a.path for a in artifacts if a.path is not None and (self.cfg.force or a.sha256 not in have)]
            if todo:
                log.info("measuring the accuracy of %d timed file(s)", len(todo))
                self.measurer(Path(self.cfg.checkpoint or ""), todo, [], path)
        if self.accuracy.path is None:
            self.accuracy = AccuracyJoin.read(self.cfg)
            self.accuracy.check(*self._join_facts())
        self.accuracy.reload()

    def _join_facts(self) -> tuple[str | None, int, dict[str, str]]:
        return self.info.get("hash"), self.cfg.snap, self.info.get("states") or {}

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
            with self.phase("timing" if mode is None else f"timing in power mode {mode}") as report:
                self.rows += measure_rows(ctx, artifacts, cfg.batches, report)
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

    def settle(self, ctx: MeasureContext, artifacts: list[BenchArtifact],
               progress: ProgressFn | None = None) -> NoiseCheck:
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
            fresh = {(r.sha256, r.batch): r for r in measure_rows(redo, arts, [cfg.batches[0]],
                                                                  progress or self.progress)}
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
        here = self.out_dir  # every file the report names is named from the folder it is written to

        def rel(path: Any) -> str | None:
            return relative_path(path, here) if path else None

        rows = [r.to_dict() for r in self.finish_rows()]
        for r in rows:
            if r.get("artifact"):
                r["artifact"] = rel(r["artifact"])
        order: dict[str, int] = {p.value: i for i, p in enumerate(self.precisions)}
        modes = list(dict.fromkeys(r.get("power_mode") for r in rows))
        primary = [r for r in rows if r["batch"] == cfg.batches[0] and r.get("power_mode") == modes[0]]
        front = pareto_front(primary, cfg.metric)
        unknown = sorted({(r["width"], r["precision"]) for r in primary if r.get("accuracy_source") == "unknown"},
                         key=lambda k: (order.get(k[1], 9), k[0]))
        unknown_files = sorted({Path(r["artifact"]).name for r in primary
                                if r.get("accuracy_source") == "unknown" and r.get("artifact")})
        report: dict[str, Any] = {
            "schema": "us3l-bench/1", "device": self.profile.name, "runner": self.runner_name,
            "precision": ",".join(self.precisions), "precisions": self.precisions, "threads": self.threads,
            "fingerprint": self.fingerprint, "environment": self.env,
            "source": {"checkpoint": rel(cfg.checkpoint), "arch": cfg.arch,
                       **({"switchable": rel(cfg.artifact)} if cfg.artifact is not None else {})},
            "outputs": self.outputs,
            "accuracy_file": rel(acc.path),
            "accuracy_note": acc.note.replace(str(acc.path), rel(acc.path) or "") if acc.note and acc.path else acc.note,
            "accuracy_unknown": [{"width": w, "precision": p} for w, p in unknown],
            "config": _config_dict(cfg, self.widths, here),
            "results": rows, "pareto": [pair(primary[i]) for i in front],
            "pareto_widths": [primary[i]["width"] for i in front],
        }
        if unknown:
            what = (f"{len(unknown_files)} timed file(s) ({', '.join(unknown_files)})" if unknown_files and
                    self.runner_name != "torch" else f"{len(unknown)} timed network(s)")
            fix = ("rerun with --measure-accuracy, or 'us3l eval CKPT --artifact FILE'" if self.runner_name != "torch"
                   else f"rerun with --measure-accuracy, or 'us3l eval CKPT --widths ...'")
            report["accuracy_unknown_note"] = (
                f"{rel(acc.path)} has no row measured on {what}: accuracy unknown, never taken from another file; {fix}")
        if self.stability is not None:
            report["stability"] = self.stability.to_dict()
        report["unstable"] = bool(self.stability and self.stability.is_unstable)
        if cfg.budget_ms is not None:
            self._add_choice(report, rows, primary, modes)
            report["choice"]["unstable"] = report["unstable"]
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
            timed = next((r for r in primary if r.get("artifact") == chosen["artifact"]), {})
            report["deploy"] = {"artifact": str(art), "sidecar": str(art.with_suffix(".json")),
                                "sha256": timed.get("sha256"), "outputs": timed.get("outputs"),
                                "width": chosen["width"], "precision": chosen["precision"],
                                "accuracy": timed.get("accuracy"), "accuracy_protocol": timed.get("accuracy_protocol"),
                                "accuracy_source": timed.get("accuracy_source")}
            if cfg.artifact is not None:  # one switchable file: the device feeds this index
                from us3l.exporters.switchable import index_for

                report["deploy"].update(switchable=relative_path(cfg.artifact, self.out_dir),
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


def run_bench(cfg: BenchConfig, progress: ProgressFn | None = None,
              measure_accuracy: AccuracyMeasurer | None = None) -> BenchResult:
    """Benchmark a width ladder at one or more precisions on a device and (with a budget) choose
    the (width, precision) pair.

    Args:
        cfg: the frozen configuration.
        progress: ``fn(done, total, description)`` called as points are measured.
        measure_accuracy: with ``cfg.measure_accuracy``, the evaluator (``us3l.api`` passes the
            trainer room's): ``fn(checkpoint, artifact files, PyTorch widths, accuracy table)``
            measures those files (or widths) and merges the rows into the table.

    Returns:
        :class:`BenchResult` with the report (also written as ``report.json``, ``latency.csv`` and
        ``latency.png`` under the output dir) and the typed rows.

    Raises:
        UnknownNameError: unknown device or runner. ConfigError: bad profile or options.
        RemoteError: ssh problems. BackendUnavailableError: missing backend.

    Examples:
        >>> # run_bench(BenchConfig(arch="us_resnet18_cifar", widths="0.5,1.0", precision="fp32,int8", budget_ms=5))
    """
    run = BenchRun(cfg, progress, measure_accuracy)
    run.measure()
    report = run.report()
    return BenchResult(report=report, paths=run.write(report), rows=run.rows)
