"""Shared by the perf scripts that measure beside a CPU load: busy processes started and stopped by
the script itself, the machine's load average, and running a ``us3l`` command with a clean
thread environment (run by hand; not part of the test suite)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: environment variables that decide threads; removed so that each run states its own
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "US3L_ONNX_EXPORTER",
              "US3L_PROGRESS_SECONDS")
BUSY_CODE = "while True: pass"


@contextlib.contextmanager
def busy_processes(n: int) -> Iterator[list[int]]:
    """``n`` processes that each keep one CPU busy (a pure-Python spin) for the block."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY_CODE], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for _ in range(n)]
    try:
        time.sleep(1.0 if n else 0.0)  # let the scheduler see them
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait()


def loadavg() -> float:
    """The 1-minute load average (what ``uptime`` shows first)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return float("nan")


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without thread settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    env.update(extra or {})
    return env


def us3l_command() -> list[str]:
    """How to start the ``us3l`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("us3l")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "us3l.cli.main"]


def run_timed(args: list[str], env: dict[str, str], cwd: Path, log: Path, timeout: float) -> tuple[float, int]:
    """Run ``us3l ARGS``; returns ``(wall seconds, exit code)``; output goes to ``log``."""
    t0 = time.perf_counter()
    with log.open("ab") as fh:
        fh.write(f"$ us3l {' '.join(args)}\n".encode())
        fh.flush()
        try:
            rc = subprocess.run(us3l_command() + args, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    return time.perf_counter() - t0, rc
