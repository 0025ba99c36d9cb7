"""Remote benchmarking against a REAL OpenSSH server on 127.0.0.1.

The fixture (tests/real_sshd.py) generates a host key and a user key in a temp dir, starts ``sshd -D -e -f <config>``
on a free port (``StrictModes no``) and stops it afterwards. The remote onnxruntime agent runs
end to end through the system ``ssh``/``scp`` client, with this venv's python as the profile's
``python``. Host-key mismatch, unknown host key and an unreachable host (a closed local port)
must each fail with one line within the timeout. Skipped only when ``sshd`` is not installed.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
import time
from pathlib import Path

import pytest

from us3l.benchmarks.devices import DeviceProfile
from us3l.benchmarks.remote.agent_runner import OrtAgentRunner
from us3l.benchmarks.remote.executor import SshExecutor
from us3l.benchmarks.runners.base import RunnerOptions, TimingConfig
from us3l.benchmarks.stats import compute_stats
from us3l.core.errors import RemoteError

from real_sshd import SKIP_WITHOUT_SSHD, free_port, keygen, sshd  # noqa: F401  (the real sshd fixture)

pytestmark = SKIP_WITHOUT_SSHD


def profile(sshd, **kw) -> DeviceProfile:
    base = dict(name="loopback", host="127.0.0.1", port=sshd["port"], user=getpass.getuser(),
                identity_file=str(sshd["identity"]), known_hosts=str(sshd["known_hosts"]), python=sys.executable,
                connect_timeout=5, command_timeout=120)
    base.update(kw)
    return DeviceProfile(**base)


def test_remote_commands_are_quoted_and_tempdir_removed(sshd):
    with SshExecutor(profile(sshd)) as ex:
        tmp = ex.tmpdir
        assert Path(tmp).is_dir()  # same machine: the "remote" temp dir is visible here
        hostile = "a b; echo INJECTED $(id) `id` '\" *"
        assert ex.run(["printf", "%s", hostile]).stdout == hostile
        (sshd["dir"] / "payload.txt").write_text("hello")
        ex.put(sshd["dir"] / "payload.txt", ex.path("p.txt"))
        assert ex.read_text(ex.path("p.txt")) == "hello"
        ex.get(ex.path("p.txt"), sshd["dir"] / "back.txt")
        assert (sshd["dir"] / "back.txt").read_text() == "hello"
    assert not Path(tmp).exists()


def test_agent_end_to_end_over_ssh(sshd, tiny_artifacts):
    opts = RunnerOptions(precision="fp32", threads=1, extra={"python": sys.executable})
    with SshExecutor(profile(sshd)) as ex:
        opts = RunnerOptions(opts.device, opts.precision, opts.threads, ex, opts.extra)
        env = OrtAgentRunner.environment(opts)
        assert env["onnxruntime"] and env["target"].startswith(getpass.getuser() + "@127.0.0.1")
        timing = TimingConfig(warmup_ms=20, duration_s=0.3, rounds=2, rewarm_ms=5)
        result = OrtAgentRunner.sweep(tiny_artifacts, [1], timing, opts)
        tmp = ex.tmpdir
    assert not Path(tmp).exists()
    narrow, wide = (compute_stats(result.times[(i, 1)]) for i in (0, 1))
    assert narrow.n >= 2 * timing.min_runs and wide.n >= 2 * timing.min_runs
    assert narrow.p50_ms < wide.p50_ms  # width 0.25 vs 1.0: ~15x apart in ONNX Runtime (docs/deployment.md §15.4)
    assert result.environment["onnxruntime"]


def test_agent_reports_missing_onnxruntime_in_one_line(sshd, tiny_artifacts):
    if subprocess.run(["/usr/bin/python3", "-c", "import onnxruntime"], capture_output=True).returncode == 0:
        pytest.skip("system python has onnxruntime; cannot provoke the missing-package error")
    with SshExecutor(profile(sshd, python="/usr/bin/python3")) as ex:
        opts = RunnerOptions(executor=ex, extra={"python": "/usr/bin/python3"})
        with pytest.raises(RemoteError, match="pip install numpy onnxruntime") as exc:
            OrtAgentRunner.environment(opts)
    assert "\n" not in str(exc.value)


def test_host_key_mismatch_is_one_line(sshd, tmp_path):
    _, other = keygen(tmp_path / "impostor")
    bad = tmp_path / "known_hosts"
    bad.write_text(f"[127.0.0.1]:{sshd['port']} ssh-ed25519 {other}\n")
    start = time.time()
    with pytest.raises(RemoteError, match="host key mismatch") as exc:
        with SshExecutor(profile(sshd, known_hosts=str(bad))):
            pass
    assert "\n" not in str(exc.value) and time.time() - start < 15


def test_unknown_host_key_needs_opt_in(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(RemoteError, match="--accept-new-host-key") as exc:
        with SshExecutor(profile(sshd, known_hosts=str(empty))):
            pass
    assert "\n" not in str(exc.value)
    with SshExecutor(profile(sshd, known_hosts=str(empty)), accept_new=True) as ex:
        assert ex.run(["echo", "ok"]).stdout.strip() == "ok"
    assert "ssh-ed25519" in empty.read_text()  # first contact recorded; later runs check it strictly


def test_unreachable_host_is_one_line_within_timeout(sshd):
    closed = free_port()  # nothing listens there
    start = time.time()
    with pytest.raises(RemoteError, match="unreachable") as exc:
        with SshExecutor(profile(sshd, port=closed, connect_timeout=3)):
            pass
    assert "\n" not in str(exc.value) and time.time() - start < 3 + 15


def test_unmultiplexed_connection_also_works(sshd):
    ex = SshExecutor(profile(sshd), multiplex=False)
    with ex:
        assert ex.run(["echo", "plain"]).stdout.strip() == "plain"


def test_run_bench_on_a_remote_profile_uses_the_agent(sshd, tmp_path, fixture_exporter):
    """The full path: TOML profile -> ssh -> agent run by the profile's python -> report."""
    from us3l.benchmarks import BenchConfig, run_bench

    workdir = tmp_path / "remote-work"
    workdir.mkdir()
    devices = tmp_path / "devices.toml"
    devices.write_text(f"""[devices.loopback]
host = "127.0.0.1"
port = {sshd['port']}
user = "{getpass.getuser()}"
identity_file = "{sshd['identity']}"
known_hosts = "{sshd['known_hosts']}"
workdir = "{workdir}"
python = "{sys.executable}"
threads = 1
connect_timeout = 5
""")
    cfg = BenchConfig(arch="us_resnet_mini", device="loopback", devices_file=devices, widths="0.25,1.0",
                      duration_s=0.1, rounds=2, warmup_ms=10, budget_ms=1000.0, out_dir=tmp_path / "out")
    report = run_bench(cfg).report
    assert report["runner"] == "onnxruntime-agent" and report["device"] == "loopback"
    assert report["environment"]["target"].endswith(f"127.0.0.1:{sshd['port']}")
    assert [r["width"] for r in report["results"]] == [0.25, 1.0] and all(r["n"] >= 6 for r in report["results"])
    assert report["chosen"] is not None
    assert list(workdir.iterdir()) == []  # the remote temp dir (under workdir) was removed
