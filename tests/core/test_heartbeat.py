"""us3l.core.heartbeat and the progress displays built on it (issue 25, item 2): plain lines in a
pipe that name the stage, its count and total, the elapsed time and an ETA, also while a stage
reports nothing; and a terminal bar that keeps its count and ETA at 80 columns."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from us3l.api.progress import progress_bar
from us3l.core.heartbeat import Heartbeat, Stage, active, clock, stage


def test_clock_and_eta():
    assert clock(5) == "0:05" and clock(125) == "2:05" and clock(3725) == "1:02:05"
    s = Stage("x", total=10)
    assert s.eta() is None  # nothing done
    s.started -= 10
    s.update(5)
    assert 8 <= s.eta() <= 12  # 5 of 10 in ~10 s
    s.update(10)
    assert s.eta() == 0.0


def test_stages_without_a_display_cost_nothing():
    assert active() is None
    with stage("alone", total=3) as s:
        s.update(1)
    assert s.done == 1


def test_a_silent_stage_still_prints_every_interval():
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    with Heartbeat(lambda line: lines.append((time.monotonic() - t0, line)), every=0.2, prefix="us3l x"):
        with stage("outer", total=4) as outer:
            outer.update(1, None, "step 1")
            with stage("BN recalibration w0.5", total=50, unit="batches") as inner:
                inner.update(3)
                time.sleep(0.9)  # a slow stage that reports nothing
    assert len(lines) >= 3, lines
    gaps = [b - a for (a, _), (b, _) in zip([(0.0, "")] + lines, lines)]
    assert max(gaps) < 0.6, gaps
    text = [line for _, line in lines]
    pattern = r"^outer 1/4 > BN recalibration w0\.5: 3/50 batches, 0:0\d elapsed(, eta \d+:\d\d)?$"
    assert any(re.match(pattern, t) for t in text), text


def test_plain_progress_bar_announces_first_and_last(monkeypatch):
    monkeypatch.setenv("US3L_PROGRESS_SECONDS", "1000")
    out = io.StringIO()
    with progress_bar("exporting", console=Console(file=out, force_terminal=False, width=80)) as update:
        for i in range(5):
            update(i + 1, 5, f"w={i}")
    lines = out.getvalue().splitlines()
    assert lines[0] == "exporting: 1/5, 0:00 elapsed; w=0" and lines[-1].startswith("exporting: 5/5, 0:00 elapsed")
    assert len(lines) == 2


def test_terminal_bar_keeps_count_and_eta_at_80_columns():
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    with progress_bar("training us_resnet_mini on imagefolder:a-long-dataset-name", console=console) as update:
        update(20, 572, "ep 1/13 loss 4.085 distill -0.543 156 img/s wait 0% and more status text")
        time.sleep(0.2)
        with stage("exporting", total=4) as s:  # a phase with its own count replaces the bar's
            s.update(2, None, "w=0.5")
            time.sleep(0.2)
            frame = console.export_text() if console.record else out.getvalue()
    frames = [f for f in re.split(r"\r|\x1b\[2K|\x1b\[1A|\n", frame) if f.strip()]
    training = [f for f in frames if "20/572" in f]
    exporting = [f for f in frames if "2/4" in f]
    assert training and exporting, frames
    for f in training + exporting:
        assert len(f) <= 80, f
        assert re.search(r"\d+/\d+ \d:\d\d:\d\d [-\d]:[-\d]{2}:[-\d]{2}", f), f  # count, elapsed, remaining
    assert exporting[-1].startswith("exporting")


def test_the_suites_progress_filter_knows_every_heartbeat_line_and_keeps_errors(message_lines):
    """tests/conftest.py drops heartbeat lines before counting a bad input's error lines: it must
    recognise each form Heartbeat.line() prints, and never an error line."""
    beat = Heartbeat(write=lambda _: None, every=0, prefix="us3l eval")
    forms = [beat.line(beat.started + 8.2)]
    with beat:
        with stage("evaluating", total=4) as outer:
            outer.update(1, None, "width 0.5")
            forms.append(beat.line())
            with stage("BN recalibration", total=50, unit="batches") as inner:
                inner.update(3)
                forms.append(beat.line(time.monotonic() + 3725))
    assert forms[0] == "us3l eval: 0:08 elapsed" and "1:02:05 elapsed" in forms[2], forms
    errors = ["error: unknown device 'tpu9'; valid: cpu, cuda, jetson",
              "error: run.toml: 'epochs' must be an integer (got 'many'), e.g. epochs = 10"]
    assert message_lines("\n".join(forms + errors)) == errors
