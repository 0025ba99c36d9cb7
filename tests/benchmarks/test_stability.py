"""A busy machine, said out loud (issue 25, item 3): noisy rows are re-measured, rows that stay
noisy make the run unstable, say so in one line, land in report.json, and fail ``--strict``.

The end-to-end test runs bench beside a real CPU load it starts itself: one spinning process per
CPU plus one, each stopping on its own after at most a minute (and killed when the test ends),
while ONNX Runtime is asked for two threads: every timed run then competes for a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from us3l.benchmarks.rows import BenchRow
from us3l.benchmarks.stability import MIN_RUNS, busy_message, describe, is_noisy, noisy_rows, spread
from us3l.cli.main import app


def _row(**kw) -> BenchRow:
    base = dict(width=1.0, n=200, p50_ms=1.0, p95_ms=1.3, mean_ms=1.05, cov=0.1)
    return BenchRow(**{**base, **kw})


def test_noisy_means_a_wide_spread_over_enough_runs():
    assert not is_noisy(_row())
    assert is_noisy(_row(cov=0.6))  # CoV above 0.5
    assert is_noisy(_row(p95_ms=2.5))  # p95 above 2x p50
    assert not is_noisy(_row(cov=3.0, n=MIN_RUNS - 1))  # too few runs to say
    assert not is_noisy(_row(cov=0.6), max_cov=1.0)
    assert noisy_rows([_row(), _row(p95_ms=16.6, cov=3.0), _row(width=0.5)]) == [1]
    assert spread({"cov": 3.0, "p50_ms": 0.27, "p95_ms": 16.6}) == (3.0, pytest.approx(61.5, abs=0.1))


def test_isolated_spikes_of_a_quiet_vm_are_not_a_busy_machine():
    import numpy as np

    from us3l.benchmarks.stats import compute_stats

    rng = np.random.default_rng(0)
    quiet = rng.normal(0.04, 0.004, 20000)  # the README's first command at load 1: a few 4-8 ms runs
    quiet[rng.choice(quiet.size, 12, replace=False)] = rng.uniform(4.0, 8.0, 12)
    s = compute_stats(quiet)
    assert s.cov > 2.0 and s.cov_p99 < 0.2  # every run vs the runs up to the p99
    assert not is_noisy(BenchRow.from_point(s.to_dict(), width=1.0))
    busy = quiet.copy()  # a busy machine slows far more than 1 % of the runs
    busy[rng.choice(busy.size, 2000, replace=False)] = rng.uniform(0.5, 8.0, 2000)
    b = compute_stats(busy)
    assert b.cov_p99 > 0.5 and is_noisy(BenchRow.from_point(b.to_dict(), width=1.0))
    old_point = {k: v for k, v in s.to_dict().items() if k != "cov_p99"}  # older lookup-table points
    assert spread(old_point)[0] == pytest.approx(s.cov)


def test_the_busy_line_says_how_noisy():
    rows = [describe(_row(width=0.75, p50_ms=0.27, p95_ms=16.6, cov=3.0)),
            describe(_row(width=1.0, p50_ms=0.36, p95_ms=20.9, cov=2.82))]
    line = busy_message(rows, 4, has_choice=True)
    assert line.startswith("the machine looks busy: 2 of 4 measured row(s) stayed noisy after a re-measurement "
                           "(width 0.75 fp32, 1.0 fp32; CoV up to 300 %, p95 up to 61.5x p50); the choice is marked "
                           "unstable."), line
    assert "\n" not in line
    cached = busy_message([{**rows[0], "cached": True}], 4, has_choice=False)
    assert "noisy points from the lookup table (--force re-measures)" in cached


@pytest.fixture
def cpu_load():
    """One busy process per CPU plus one, bounded: each stops itself after 60 s and is killed at the end."""
    code = "import time\nend = time.time() + 60\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range((os.cpu_count() or 1) + 1)]
    time.sleep(0.5)
    try:
        yield len(procs)
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_bench_beside_a_real_cpu_load_says_the_machine_is_busy(tmp_path, cpu_load):
    out = tmp_path / "b"
    args = ["bench", "--arch", "us_resnet_mini", "--widths", "1.0", "--threads", "2", "--duration", "0.3",
            "--rounds", "2", "--warmup-ms", "20", "--budget-ms", "1000", "--no-plot", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--strict"])
    text = " ".join(result.output.split())
    assert result.exit_code == 3, text
    assert "warning: the machine looks busy: 1 of 1 measured row(s) stayed noisy after a re-measurement" in text, text
    assert "(unstable)" in text and "error: --strict: the measurement is unstable" in text
    assert "Traceback" not in text
    report = json.loads((out / "report.json").read_text())  # written all the same
    assert report["unstable"] is True and report["choice"]["unstable"] is True
    stability = report["stability"]
    assert stability["limits"] == {"max_cov": 0.5, "max_p95_over_p50": 2.0, "min_runs": MIN_RUNS}
    assert len(stability["remeasured"]) == 1 and len(stability["noisy_after_remeasure"]) == 1
    assert stability["message"].startswith("the machine looks busy")
    assert report["results"][0]["remeasured"] == 1
    # without --strict the same finding is a warning and the exit code is 0 (the cached, noisy point
    # is not measured again: it is named as coming from the lookup table)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "noisy points from the lookup table" in " ".join(again.output.split())
