"""Issue 15 fault tests, on real processes: kill -9 during a checkpoint write (then SIGTERM on
the next run) and during an export, two concurrent exports into one folder, a full disk (a real small tmpfs
in a private mount namespace where the machine allows it; tests/cli/test_reliability_matrix.py
simulates ENOSPC everywhere else).

A kill at an exact point is made by the process itself: a small driver patches one function to
send itself SIGKILL (a real kill -9: no Python clean-up runs) and then runs the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from us3l.core.checkpoint import load_checkpoint

PY = sys.executable
US3L = [PY, "-m", "us3l.cli.main"]
TRAIN = ["train", "--batch-size", "16", "--image-size", "8", "--max-steps-per-epoch", "2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _driver(tmp: Path, patch: str) -> Path:
    """A script that applies ``patch`` (Python source) and then runs the CLI with its arguments."""
    path = tmp / "driver.py"
    path.write_text("import os, signal, sys, time\n" + textwrap.dedent(patch) +
                    "\nfrom us3l.cli.main import app\nsys.argv[0] = 'us3l'\napp()\n")
    return path


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_sigterm_on_the_next_run(tmp_path):
    """kill -9 half-way through the second checkpoint write leaves the first checkpoint intact and
    a temp file; the next run (--resume) removes that temp file with its first write. SIGTERM then
    stops it with the Ctrl-C line, exit code 143, its checkpoint intact, and metrics.jsonl records
    exactly the epochs that checkpoint holds."""
    out = tmp_path / "run"
    driver = _driver(tmp_path, """
        import us3l.core.checkpoint as c
        real, state = c._HashingWriter.write, {"saves": 0, "bytes": 0}
        def write(self, data):
            state["bytes"] += len(data)
            if state["saves"] == 2 and state["bytes"] > 20000:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, data)
        real_save = c.save_checkpoint
        def save(ckpt, path):
            state["saves"] += 1
            state["bytes"] = 0
            return real_save(ckpt, path)
        c._HashingWriter.write = write
        import us3l.trainer.loop as loop
        loop.save_checkpoint = save
    """)
    args = [*TRAIN, "--epochs", "200", "--out", str(out)]
    killed = subprocess.run([PY, str(driver), *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stray = [p.name for p in out.glob(".checkpoint.pt.*.tmp")]
    assert len(stray) == 1, stray  # what the kill left: a temp file no process will finish
    assert load_checkpoint(out / "checkpoint.pt").epoch == 1  # the previous checkpoint is intact
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]

    proc = subprocess.Popen([*US3L, *args, "--resume"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 180
    metrics = out / "metrics.jsonl"
    while len(metrics.read_text().splitlines()) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # epoch 2 checkpointed (its record follows the checkpoint)
    assert proc.poll() is None and not (out / stray[0]).exists()  # removed by that first write
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.epoch >= 2
    records = [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == list(range(1, ckpt.epoch + 1))  # every recorded epoch has its checkpoint
    assert _hidden(out) == [], "no temp file of either run is left"


def _sidecars_match(out: Path) -> list[str]:
    from us3l.core.files import sha256_file

    names = []
    for side in sorted(out.glob("[!.]*.json")):
        data = json.loads(side.read_text())
        assert data["sha256"] == sha256_file(out / data["artifact"]), side
        names.append(data["artifact"])
    return names


@pytest.mark.slow
def test_kill_9_during_an_export_ladder_then_rerun_repairs(tmp_path):
    out = tmp_path / "onnx"
    ladder = ["export", "--arch", "us_resnet_mini", "--widths", "0.25,1.0", "--out", str(out)]
    # the commit dies after its first rename: one artifact is in place without its sidecar, the
    # journal and the staging folder (with the other files) stay behind
    driver = _driver(tmp_path, """
        import us3l.exporters.artifacts as a
        real, moved = a.os.replace, []
        def replace(src, dst):
            if ".us3l-export-" in str(src) and ".us3l-export-" not in str(dst):  # the commit's renames
                moved.append(dst)
                if len(moved) == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        a.os.replace = replace
    """)
    killed = subprocess.run([PY, str(driver), *ladder], env=ENV, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert any(p.name.startswith(".us3l-export-") for p in out.iterdir())
    assert (out / ".us3l-commit.json").is_file()
    assert len(list(out.glob("*.onnx"))) == 1 and not list(out.glob("[!.]*.json"))  # an artifact without its sidecar
    rerun = subprocess.run([*US3L, *ladder], env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]  # repaired, no --force demanded
    assert _hidden(out) == []
    assert _sidecars_match(out) == ["us_resnet_mini_w0.25.onnx", "us_resnet_mini_w1.0.onnx"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"us_resnet_mini_w{w}.{ext}" for w in ("0.25", "1.0") for ext in ("onnx", "json")])


@pytest.mark.slow
def test_two_concurrent_exports_into_one_folder(tmp_path):
    out = tmp_path / "onnx"
    # the first export waits, holding the folder, until the test lets it go on: the second
    # surely runs while the first is staging
    go = tmp_path / "go"
    slow = _driver(tmp_path, f"""
        import us3l.exporters.pipeline as p
        real = p._Run.artifact
        def artifact(self, *a, **k):
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            return real(self, *a, **k)
        p._Run.artifact = artifact
    """)
    first = subprocess.Popen([PY, str(slow), "export", "--arch", "us_resnet_mini", "--widths", "0.25,0.5,0.75,1.0",
                              "--out", str(out)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out.is_dir() and any(p.name.startswith(".us3l-export-") for p in out.iterdir())):
        assert first.poll() is None and time.time() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    second = subprocess.run([*US3L, "export", "--arch", "us_resnet_mini", "--widths", "0.5", "--opset", "18",
                             "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300)
    assert first.poll() is None
    go.touch()
    assert second.returncode == 2, second.stderr
    lines = [ln for ln in second.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "another us3l export (or bench) is writing into" in lines[0], second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert _hidden(out) == []
    assert len(_sidecars_match(out)) == 4
    assert {json.loads(s.read_text())["opset"] for s in out.glob("[!.]*.json")} == {17}  # nothing of the second


def _private_tmpfs_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _private_tmpfs_works(), reason="no private mount namespace here (the simulated ENOSPC "
                    "test in test_reliability_matrix.py covers the commands)")
def test_full_disk_on_a_real_small_tmpfs(tmp_path):
    """Class 1 on a real file system: a 256 KiB tmpfs mounted in a private namespace fills up
    during export (the ONNX file) and train (the checkpoint). Each command gives one
    line and exit code 2 and leaves nothing but empty folders; every temp file is gone."""
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "full.sh"
    us3l = " ".join(US3L)
    script.write_text(textwrap.dedent(f"""\
        set -u
        mount -t tmpfs -o size=256k tmpfs {disk}
        cd {disk}
        run() {{ "$@" >out.txt 2>err.txt; echo "rc=$? lines=$(grep -c . err.txt) $(tail -n 1 err.txt)"; rm -f out.txt err.txt; }}
        run {us3l} export --arch us_resnet_mini --widths 1.0 --out x
        run {us3l} train --epochs 1 --max-steps-per-epoch 1 --batch-size 16 --image-size 8 --out run
        find . -mindepth 1
    """))
    res = subprocess.run(["unshare", "-Urm", "bash", str(script)], env={**ENV, "HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=500)
    lines = res.stdout.strip().splitlines()
    results = [ln for ln in lines if ln.startswith("rc=")]
    assert len(results) == 2, res.stdout + res.stderr[-2000:]
    for ln in results:
        assert ln.startswith("rc=2 ") and "No space left on device" in ln and "Traceback" not in ln, ln
    # nothing is left: no file and no folder (train removes the run folder it created)
    assert [ln for ln in lines if not ln.startswith("rc=")] == [], res.stdout
