"""us3l.core.threads: the thread count from the machine's load (issue 25, item 1)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from us3l.core import threads as th
from us3l.core.errors import ConfigError


def test_one_thread_per_free_cpu_at_least_one():
    assert th.threads_for(0.0, 2) == 2
    assert th.threads_for(0.4, 2) == 1  # 1.6 CPUs free: the second counts only when >= 0.7 of it is idle
    assert th.threads_for(0.2, 2) == 2
    assert th.threads_for(2.0, 2) == 1  # others keep both busy: one thread, never zero
    assert th.threads_for(7.5, 4) == 1
    assert th.threads_for(1.0, 8) == 7
    assert th.threads_for(None, 6) == 6  # unknown load: the CPUs


def test_explicit_count_and_omp_num_threads_win(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert th.choose_threads(3) == th.ThreadChoice(3, False, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert th.choose_threads(0).threads == 5 and not th.choose_threads(0).auto
    assert th.choose_threads(2).threads == 2  # the option beats the environment


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_counts_are_one_line(bad):
    with pytest.raises(ConfigError, match=r"--threads .* is invalid; valid: 0 \(auto\) or a positive number"):
        th.check_threads(bad)


def test_others_busy_is_total_minus_own():
    a = th._Sample(at=0.0, busy=100.0, own=10.0)
    b = th._Sample(at=2.0, busy=104.0, own=11.0)  # 4 CPU-s busy in 2 s, 1 of them ours
    assert th.busy_between(a, b) == pytest.approx(1.5)
    assert th.busy_between(th._Sample(0.0, -1.0, 0.0), b) is None  # not measurable here


def test_auto_threads_follow_the_load_when_openmp_spins(monkeypatch):
    """Re-checks adjust torch's threads when other processes come and go (fake /proc samples)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "passive_waiting", lambda: False)
    monkeypatch.setattr(th, "usable_cpus", lambda: 2)
    monkeypatch.setattr(th, "busy_elsewhere", lambda window_s=th.PROBE_S: 0.0)
    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(th, "_sample", lambda: th._Sample(clock["t"], clock["busy"], clock["own"]))
    monkeypatch.setattr(th, "_now", lambda: clock["t"])
    previous = torch.get_num_threads()
    try:
        auto = th.AutoThreads(0, every=5.0)
        assert auto.threads == 2 and torch.get_num_threads() == 2
        clock.update(t=1.0, busy=1.5, own=1.0)  # not due yet (the first re-check comes after 2 s)
        assert auto.tick() == 2
        clock.update(t=6.0, busy=12.0, own=5.0)  # 6 s: 12 CPU-s busy, 5 ours -> others 7/6 = 1.2 CPUs
        assert auto.tick() == 1 and torch.get_num_threads() == 1
        clock.update(t=12.0, busy=18.0, own=11.0)  # 6 s: only our 6 CPU-s -> others 0
        assert auto.tick() == 2 and torch.get_num_threads() == 2
        assert [c[1] for c in auto.changes] == [1, 2]
        fixed = th.AutoThreads(1, every=0.0)
        clock.update(t=20.0, busy=18.0, own=11.0)
        assert fixed.tick() == 1 and not fixed.choice.auto
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_a_real_busy_process_is_seen():
    """A real, bounded load: one spinning process for about a second is measured as about one busy CPU."""
    spin = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        seen = th.busy_elsewhere(0.5)
    finally:
        spin.kill()
        spin.wait()
    assert seen is not None and seen >= 0.6, seen  # its CPU (other test workers may add more)


def _policy(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_passive_waiting_before_torch_respects_the_users_choice():
    show = ("from us3l.core.threads import prefer_passive_waiting as p, passive_waiting as w, choose_threads as c, "
            "usable_cpus as u\n{pre}p()\nimport os\nprint(os.environ.get('OMP_WAIT_POLICY'), w(), c(0).threads == u())")
    assert _policy(show.format(pre="")) == "PASSIVE True True"  # the CLI's case: set before torch, all CPUs
    assert _policy(show.format(pre=""), OMP_WAIT_POLICY="active").startswith("active False")  # the user's choice
    # torch imported first: setting the variable would change nothing, so it is not set and auto
    # falls back to one thread per idle CPU
    assert _policy(show.format(pre="import torch\n")).startswith("None False")
    assert _policy(show.format(pre=""), GOMP_SPINCOUNT="0").startswith("None True")


def test_auto_is_every_usable_cpu_when_waiting_is_passive(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(th, "passive_waiting", lambda: True)
    monkeypatch.setattr(th, "usable_cpus", lambda: 3)
    monkeypatch.setattr(th, "busy_elsewhere", lambda window_s=th.PROBE_S: 2.5)  # a busy machine: no matter
    choice = th.choose_threads(0)
    assert choice.threads == 3 and not choice.auto and "OMP_WAIT_POLICY=PASSIVE" in choice.reason
