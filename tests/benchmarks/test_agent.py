"""The self-contained ONNX Runtime agent, run through a LocalExecutor (no sshd needed)."""

from __future__ import annotations

import ast
import os
import sys

import pytest

from us3l.benchmarks.run import resolve_runner
from us3l.benchmarks.devices import DeviceProfile
from us3l.benchmarks.remote.agent_runner import AGENT_FILE, OrtAgentRunner, parse_agent_output
from us3l.benchmarks.remote.executor import LocalExecutor
from us3l.benchmarks.runners import RunnerOptions, TimingConfig
from us3l.core.errors import ConfigError, RemoteError


def test_agent_imports_only_stdlib_numpy_onnxruntime():
    tree = ast.parse(AGENT_FILE.read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert mods <= set(sys.stdlib_module_names) | {"numpy", "onnxruntime"}, mods


def test_agent_sweep_locally(tiny_artifacts):
    with LocalExecutor() as ex:
        opts = RunnerOptions(threads=1, executor=ex, extra={"python": sys.executable})
        timing = TimingConfig(warmup_ms=10, iterations=6, rounds=2, rewarm_ms=0)
        result = OrtAgentRunner.sweep(tiny_artifacts, [1, 2], timing, opts)
        with OrtAgentRunner(tiny_artifacts[0], opts) as runner:  # per-artifact measure also works
            assert len(runner.measure(1, timing)) == 3
        tmp = ex.tmpdir
    assert set(result.times) == {(0, 1), (0, 2), (1, 1), (1, 2)}
    assert all(len(v) == 6 for v in result.times.values())
    assert result.environment["onnxruntime"]
    assert not os.path.exists(tmp)


def test_agent_bad_model_is_one_line(tmp_path):
    from us3l.benchmarks.artifacts import BenchArtifact

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    art = BenchArtifact(width=0.5, path=bad, sha256="0" * 64, input_shape=(1, 3, 32, 32))
    with LocalExecutor() as ex:
        opts = RunnerOptions(executor=ex, extra={"python": sys.executable})
        with pytest.raises(RemoteError, match="remote agent failed .*agent error: cannot load a model") as exc:
            OrtAgentRunner.sweep([art], [1], TimingConfig(iterations=1, rounds=1), opts)
    assert "\n" not in str(exc.value)


def test_parse_agent_output():
    assert parse_agent_output('noise\n{"agent": 1, "times": {"0:1": [1.0]}}\n')["times"] == {"0:1": [1.0]}
    with pytest.raises(RemoteError, match="printed no result"):
        parse_agent_output("Traceback ...")


def test_remote_runner_resolution():
    remote = DeviceProfile(name="pi", host="pi")
    assert resolve_runner("onnxruntime", remote) == "onnxruntime-agent"
    assert resolve_runner("trtexec", remote) == "trtexec"
    with pytest.raises(ConfigError, match="runs in this process"):
        resolve_runner("torch", remote)
    assert resolve_runner("onnxruntime", DeviceProfile(name="cpu")) == "onnxruntime"
