"""The ``onnxruntime-agent`` runner: ships ``agent_ort.py`` and the ONNX files to a device
(any :class:`Executor`: ssh or local) and times them there in one interleaved sweep."""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import tempfile
from collections.abc import Sequence
from pathlib import Path

from us3l.core.errors import ConfigError, RemoteError
from us3l.core.precision import Precision

from ..artifacts import BenchArtifact
from ..runners.base import Runner, RunnerOptions, StepCallback, SweepResult, TimingConfig
from ..runners.registry import register_runner

log = logging.getLogger(__name__)
AGENT_FILE = Path(__file__).with_name("agent_ort.py")


def agent_spec(models: Sequence[tuple[int, str]], batches: Sequence[int], timing: TimingConfig,
               threads: int | None, rounds: int | None = None) -> dict:
    """The agent's JSON spec (see ``agent_ort.py``)."""
    return {"models": [{"id": i, "path": p} for i, p in models], "batches": list(batches),
            "warmup_ms": timing.warmup_ms, "rewarm_ms": timing.rewarm_ms, "round_seconds": timing.round_seconds(),
            "round_iterations": timing.round_iterations(), "rounds": rounds or timing.rounds,
            "idle_gap_ms": timing.idle_gap_ms, "min_runs": timing.min_runs, "threads": threads}


def parse_agent_output(stdout: str) -> dict:
    """The agent's JSON result (its last stdout line).

    Raises:
        RemoteError: no JSON result line.
    """
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(data, dict) and "times" in data:
                return data
    raise RemoteError(f"the remote agent printed no result: {stdout.strip()[-200:]!r}")


def _run_agent(options: RunnerOptions, models: list[tuple[int, str]], batches: Sequence[int],
               timing: TimingConfig, rounds: int | None = None) -> dict:
    ex = options.executor
    agent = ex.upload_once(AGENT_FILE, "agent_ort.py", "agent_ort.py")
    with tempfile.TemporaryDirectory() as tmp:
        spec_local = Path(tmp, "spec.json")
        spec_local.write_text(json.dumps(agent_spec(models, batches, timing, options.threads, rounds)))
        spec_remote = ex.path(f"spec_{secrets.token_hex(4)}.json")
        ex.put(spec_local, spec_remote)
    python = str(options.extra.get("python", "python3"))
    res = ex.run_shell(f"cd {shlex.quote(ex.tmpdir)} && {shlex.join([python, agent, spec_remote])}", check=False)
    if res.returncode != 0:
        err = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
        raise RemoteError(f"{ex.describe()}: remote agent failed (exit {res.returncode}): "
                          f"{err[-1] if err else 'no output'}")
    return parse_agent_output(res.stdout)


@register_runner("onnxruntime-agent")
class OrtAgentRunner(Runner):
    """ONNX Runtime on the target via the self-contained agent (needs ``options.executor``)."""

    @classmethod
    def check_available(cls, options: RunnerOptions) -> None:
        if Precision.parse(options.precision).reduced:
            raise ConfigError(f"the onnxruntime agent measures the fp32 ONNX; precision {options.precision!r} "
                              "applies to the trtexec runner")

    def _activate(self) -> None:
        ex = self.options.executor
        if ex is None:
            raise ConfigError("the onnxruntime-agent runner needs a device executor")
        if self.artifact.path is None:
            raise ConfigError("the onnxruntime-agent runner needs an ONNX artifact")
        self._remote_model = ex.upload_once(self.artifact.path, self.artifact.sha256,
                                            f"model_{self.artifact.sha256[:16]}.onnx")

    def _deactivate(self) -> None:
        self._remote_model = None

    def measure(self, batch: int, timing: TimingConfig) -> list[float]:
        """One round for this artifact (each call starts the agent: prefer :meth:`sweep`)."""
        data = _run_agent(self.options, [(0, self._remote_model)], [batch], timing, rounds=1)
        return [float(t) for t in data["times"][f"0:{batch}"]]

    @classmethod
    def sweep(cls, artifacts: Sequence[BenchArtifact], batches: Sequence[int], timing: TimingConfig,
              options: RunnerOptions, on_step: StepCallback | None = None) -> SweepResult:
        """Upload everything once, then one agent call times all widths in interleaved rounds."""
        runners = [cls(a, options) for a in artifacts]
        for r in runners:
            r.activate()
        try:
            models = [(i, r._remote_model) for i, r in enumerate(runners)]
            log.info("timing %d model(s) on %s with the onnxruntime agent", len(models), options.executor.describe())
            data = _run_agent(options, models, batches, timing)
        finally:
            for r in runners:
                r.deactivate()
        if on_step:
            for _ in range(len(artifacts) * len(batches) * timing.rounds):
                on_step("remote agent")
        try:
            times = {(i, b): [float(t) for t in data["times"][f"{i}:{b}"]] for i in range(len(artifacts))
                     for b in batches}
        except KeyError as exc:
            raise RemoteError(f"the remote agent result lacks {exc}") from None
        return SweepResult(times=times, environment=dict(data.get("env") or {}))

    @classmethod
    def environment(cls, options: RunnerOptions) -> dict:
        """Host facts of the target, probed with the configured python (part of the fingerprint)."""
        ex = options.executor
        python = str(options.extra.get("python", "python3"))
        probe = ("import json,os,platform,socket;import onnxruntime as o;print(json.dumps({'hostname':"
                 "socket.gethostname(),'machine':platform.machine(),'platform':platform.platform(),"
                 "'cpu_count':os.cpu_count(),'onnxruntime':o.__version__}))")
        res = ex.run([python, "-c", probe], check=False, timeout=120)
        if res.returncode != 0:
            err = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
            raise RemoteError(f"{ex.describe()}: cannot run {python} with onnxruntime on the device: "
                              f"{err[-1] if err else 'exit ' + str(res.returncode)}; pip install numpy onnxruntime")
        env = parse_agent_output('{"times": 0, "env": ' + res.stdout.strip().splitlines()[-1] + "}")["env"]
        return {"runner": cls.name, "target": ex.describe(), **env}
