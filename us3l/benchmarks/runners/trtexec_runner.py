"""trtexec runner, local or remote: build the engine ON the target, time it with ``--exportTimes``.

Per artifact: upload the ONNX, ``trtexec --onnx --saveEngine --min/opt/maxShapes`` (precision flags
only for TRT <= 10), then per round ``trtexec --loadEngine --shapes --warmUp --duration|--iterations
--useSpinWait --exportTimes``; the JSON trace is fetched and our statistics are computed from it.
If the trace is missing, the stdout summary is parsed instead (``fallback`` extra). On Jetson,
tegrastats samples the power rails in the background during each timed run.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from us3l.core.errors import BackendUnavailableError, ConfigError, ExportError, US3LError
from us3l.core.precision import Precision

from .. import tegrastats, trtexec
from ..artifacts import BenchArtifact
from .base import Runner, RunnerOptions, StepCallback, SweepResult, TimingConfig
from .registry import register_runner

log = logging.getLogger(__name__)


def onnx_input_name(path: Any) -> str:
    """Name of the first real graph input of an ONNX file (initializers excluded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if not names:
        raise ConfigError(f"{path} has no graph input")
    return names[0]


def probe_trt_version(ex: Any, trtexec_path: str) -> trtexec.Version:
    """TensorRT version from the ``&&&& RUNNING ... [TensorRT vNNNN]`` line of ``trtexec --help``.

    Raises:
        BackendUnavailableError: trtexec is not on the target.
        ConfigError: the version cannot be read (set ``trt_version`` in the device profile).
    """
    if ex.which(trtexec_path) is None:
        raise BackendUnavailableError(f"trtexec not found at {trtexec_path!r} on {ex.describe()}; "
                                      "set 'trtexec' in the device profile (JetPack: /usr/src/tensorrt/bin/trtexec)")
    res = ex.run([trtexec_path, "--help"], check=False, timeout=60)
    version = trtexec.parse_version(res.stdout + res.stderr)
    if version is None:
        raise ConfigError(f"cannot read the TensorRT version from {trtexec_path} --help on {ex.describe()}; "
                          "set trt_version = \"10.3.0\" in the device profile")
    return version


@register_runner("trtexec")
class TrtexecRunner(Runner):
    """One engine on the target, timed by trtexec (needs ``options.executor``)."""

    def _activate(self) -> None:
        ex, extra = self.options.executor, self.options.extra
        if ex is None:
            raise ConfigError("the trtexec runner needs a device executor")
        if self.artifact.path is None:
            raise ConfigError("the trtexec runner needs an ONNX artifact")
        self._tool = str(extra.get("trtexec", "trtexec"))
        self._version = tuple(extra.get("trt_version") or probe_trt_version(ex, self._tool))
        self._input = onnx_input_name(self.artifact.path)
        sha = self.artifact.sha256[:16]
        onnx_remote, calib_remote = self._upload_model(ex, sha)
        self._engine = ex.path(f"engine_{sha}_{self.options.precision}.engine")
        batches = list(extra.get("batches") or [1])
        cmd = trtexec.build_command(self._tool, onnx_remote, self._engine, self._input, self.artifact.input_shape[1:],
                                    batches, self.options.precision, self._version,
                                    workspace_mib=extra.get("workspace_mib"), calib=calib_remote)
        log.info("building TensorRT engine for width %s on %s", self.artifact.width, ex.describe())
        log_path = ex.path(f"build_{sha}.log")
        res = ex.run_shell(f"{shlex.join(cmd)} > {shlex.quote(log_path)} 2>&1", check=False)
        if res.returncode != 0:
            tail = ex.run(["tail", "-n", "3", "--", log_path], check=False).stdout.strip().splitlines()
            raise ExportError(f"trtexec engine build failed for width {self.artifact.width} on {ex.describe()}: "
                              f"{tail[-1] if tail else 'exit ' + str(res.returncode)}")
        self._round = 0

    def _upload_model(self, ex: Any, sha: str) -> tuple[str, str | None]:
        """Upload what trtexec builds from: ``(remote ONNX, remote calibration cache or None)``.

        The exporters say what that is for this precision and TensorRT version
        (:func:`us3l.exporters.trtexec_input.trtexec_input`: the FP32 ONNX with flags on TensorRT
        <= 10, the FP16 graph or an INT8 Q/DQ graph on strongly typed TensorRT >= 11, an INT8
        calibration cache derived from the export's ranges on <= 10); this runner only uploads and
        measures. How INT8 reached the engine is recorded per row as ``int8_path``.
        """
        import tempfile

        from us3l.exporters.trtexec_input import trtexec_input

        art, precision = self.artifact, Precision.parse(self.options.precision)
        if precision.reduced and not precision.plan.calibrated and self._version[0] >= 11 \
                and f"{art.sha256}:half" in ex.uploaded:  # converted and uploaded by an earlier activation
            return ex.uploaded[f"{art.sha256}:half"], None
        assert art.path is not None  # checked in _activate
        with tempfile.TemporaryDirectory() as tmp:
            given = trtexec_input(Path(art.path), precision, self._version, Path(tmp), source=art.source,
                                  ranges=art.ranges, width=art.width)
            self._int8_path = given.int8_path
            names = {"plain": f"model_{sha}.onnx", "half": f"model_{sha}_fp16.onnx", "qdq": f"model_{sha}_int8_qdq.onnx"}
            remote = ex.upload_once(given.onnx, f"{art.sha256}:{given.kind}", names[given.kind])
            cache = None
            if given.calibration_cache is not None:
                cache = ex.upload_once(given.calibration_cache, f"{art.sha256}:calib:{self._version}",
                                       f"calib_{sha}.cache")
            return remote, cache

    def _deactivate(self) -> None:
        self._engine = None

    def measure(self, batch: int, timing: TimingConfig) -> list[float]:
        """One round: trtexec timing run at ``batch``; raw host latencies from ``--exportTimes``."""
        ex, extra = self.options.executor, self.options.extra
        self._round += 1
        tag = f"{self.artifact.sha256[:12]}_{batch}_{self._round}"
        times_path, log_path = ex.path(f"times_{tag}.json"), ex.path(f"run_{tag}.log")
        warm = timing.warmup_ms if batch not in self._warmed else timing.rewarm_ms
        self._warmed.add(batch)
        if getattr(self, "_int8_path", None):
            self.add_extra(batch, "int8_path", self._int8_path)
        cmd = trtexec.run_command(self._tool, self._engine, self._input, (batch, *self.artifact.input_shape[1:]),
                                  self._version, warm, timing.round_seconds(), timing.round_iterations(),
                                  times_path, idle_ms=timing.idle_gap_ms)
        script = f"{shlex.join(cmd)} > {shlex.quote(log_path)} 2>&1"
        ts_log = None
        if extra.get("tegrastats"):
            ts_log = ex.path(f"tegra_{tag}.log")
            start, stop = tegrastats.sampler_shell(str(extra["tegrastats"]), ts_log)
            script = f"{start}; {script}; rc=$?; {stop}; exit $rc"
        res = ex.run_shell(script, check=False)
        text = ex.run(["cat", "--", log_path], check=False).stdout
        if res.returncode != 0:
            summary = trtexec.parse_stdout(text)
            last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or [f"exit {res.returncode}"]
            raise US3LError(f"trtexec run failed for width {self.artifact.width} batch {batch} "
                            f"({summary['result'] or 'no result line'}): {last[0]}")
        if ts_log:
            samples = tegrastats.parse_log(ex.run(["cat", "--", ts_log], check=False).stdout)
            power = tegrastats.mean_power_mw(samples)
            if power is not None:
                self.add_extra(batch, "power_mw", power)
        probe = ex.run(["cat", "--", times_path], check=False)
        if probe.returncode == 0 and probe.stdout.strip():
            trace = trtexec.parse_export_times(probe.stdout)
            if trace["compute"]:
                self.add_extra(batch, "compute_ms", trace["compute"])
            return trace["latency"]
        log.warning("no --exportTimes trace for width %s; falling back to trtexec's stdout summary",
                    self.artifact.width)
        self.add_extra(batch, "fallback", trtexec.summary_to_row(trtexec.parse_stdout(text), batch))
        return []

    @classmethod
    def environment(cls, options: RunnerOptions) -> dict:
        """TensorRT version, trtexec path and (on Jetson) nvpmodel / jetson_clocks state."""
        ex, extra = options.executor, options.extra
        tool = str(extra.get("trtexec", "trtexec"))
        version = extra.get("trt_version") or probe_trt_version(ex, tool)
        env = {"runner": cls.name, "target": ex.describe(), "trtexec": tool,
               "trt_version": ".".join(str(v) for v in version)}
        res = ex.run(["uname", "-a"], check=False, timeout=30)
        env["uname"] = res.stdout.strip()
        if extra.get("jetson"):
            from ..remote.jetson import jetson_state

            state = jetson_state(ex)
            env.update(state)
            env["nvpmodel_mode"] = (state.get("nvpmodel") or {}).get("id")
        return env

    @classmethod
    def sweep(cls, artifacts: Sequence[BenchArtifact], batches: Sequence[int], timing: TimingConfig,
              options: RunnerOptions, on_step: StepCallback | None = None) -> SweepResult:
        """Probe the TensorRT version once, then the generic interleaved sweep."""
        extra = dict(options.extra)
        if not extra.get("trt_version"):
            extra["trt_version"] = probe_trt_version(options.executor, str(extra.get("trtexec", "trtexec")))
        extra["batches"] = list(batches)
        if extra.get("jetson") and not extra.get("tegrastats_checked"):
            tool = str(extra.get("tegrastats") or "tegrastats")
            extra["tegrastats"] = tool if options.executor.which(tool) else None
            extra["tegrastats_checked"] = True
        opts = RunnerOptions(options.device, options.precision, options.threads, options.executor, extra)
        return super().sweep(artifacts, batches, timing, opts, on_step)
