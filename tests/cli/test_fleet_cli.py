"""`us3l fleet plan|check` from the command line: the table, the exit codes (0 planned / OK, 1 a device
not planned or a check that failed, 2 bad input in one line), one line per device in check, an
unreachable device (a closed local port) that loses no other result, a re-run from the lookup
table, and Ctrl-C leaving the previous manifest intact. Real ONNX Runtime on this CPU, tiny settings
(untrained us_resnet_mini, two widths)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

US3L = [sys.executable, "-m", "us3l.cli.main"]
ENV = {**os.environ, "COLUMNS": "160"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, cwd: Path | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*US3L, *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)


def fleet_text(devices_file: str | None = None, extra: str = "") -> str:
    return f"""arch = "us_resnet_mini"
widths = "0.25,1.0"
{f'devices_file = "{devices_file}"' if devices_file else ''}

[timing]
duration_s = 0.05
rounds = 2
warmup_ms = 5

[devices.one]
device = "cpu"
threads = 1
budget_ms = 1000
precisions = ["fp32", "int8"]

[devices.two]
device = "cpu"
threads = 2
budget_ms = 1000
percentile = "p50"
{extra}"""


@pytest.fixture(scope="module")
def planned(tmp_path_factory, validate_manifest):
    """A plan with two local CPU devices and one ssh device whose port is closed."""
    root = tmp_path_factory.mktemp("fleetcli")
    (root / "devices.toml").write_text(f"""[devices.closed]
host = "127.0.0.1"
port = {free_port()}
known_hosts = "{root / 'known_hosts'}"
connect_timeout = 3
""")
    fleet = root / "fleet.toml"
    fleet.write_text(fleet_text("devices.toml", '\n[devices.away]\ndevice = "closed"\nbudget_ms = 5\n'))
    first = run("fleet", "plan", str(fleet), "-o", str(root / "plan"))
    validate_manifest(root / "plan" / "manifest.json")
    again = run("fleet", "plan", str(fleet), "-o", str(root / "plan"))
    validate_manifest(root / "plan" / "manifest.json")
    return {"root": root, "fleet": fleet, "first": first, "again": again, "plan": root / "plan"}


def test_plan_prints_the_table_keeps_the_others_and_exits_1_for_an_unreachable_device(planned):
    res = planned["first"]
    assert res.returncode == 1, res.stderr[-2000:]
    assert "fleet plan" in res.stdout and "one" in res.stdout and "two" in res.stdout
    assert "deploy one: " in res.stdout and "manifest: " in res.stdout and "fleet.png" in res.stdout
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "device away not planned" in errors[0] and "connection refused" in errors[0]
    assert "Traceback" not in res.stderr
    manifest = json.loads((planned["plan"] / "manifest.json").read_text())
    state = {d["device"]: d["planned"] for d in manifest["devices"]}
    assert state == {"one": True, "two": True, "away": False}


def test_rerun_resumes_from_the_lookup_table(planned):
    assert planned["again"].returncode == 1  # the device is still away
    manifest = json.loads((planned["plan"] / "manifest.json").read_text())
    report = json.loads((planned["plan"] / "bench" / "devices" / "one" / "report.json").read_text())
    assert all(r["cached"] for r in report["results"]), "a re-plan measured again"
    assert all(d["latency_ms"]["cached"] for d in manifest["devices"] if d["planned"])


def test_check_one_line_per_device_and_exit_codes(planned, tmp_path):
    import shutil

    plan = tmp_path / "plan"
    shutil.copytree(planned["plan"], plan)
    res = run("fleet", "check", str(plan / "manifest.json"), "--threshold", "1000")
    lines = res.stdout.strip().splitlines()
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert [ln.split()[:2] for ln in lines] == [["OK", "one:"], ["OK", "two:"], ["SKIPPED", "away:"]], lines

    data = json.loads((plan / "manifest.json").read_text())
    one = next(d for d in data["devices"] if d["device"] == "one")
    one["latency_ms"]["p50"] /= 100  # drifted: now 100x slower than planned
    (plan / "manifest.json").write_text(json.dumps(data))
    res = run("fleet", "check", str(plan / "manifest.json"), "--threshold", "1000", "--json")
    assert res.returncode == 1
    report = json.loads(res.stdout)
    assert [d["status"] for d in report["devices"]] == ["DRIFT", "OK", "SKIPPED"] and report["ok"] is False

    two = next(d for d in data["devices"] if d["device"] == "two")
    f = plan / two["artifact"]["file"]
    f.write_bytes(f.read_bytes() + b"\0")  # tampered
    res = run("fleet", "check", str(plan / "manifest.json"), "--threshold", "1000")
    assert res.returncode == 1
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[1].startswith("HASH") and "two:" in lines[1], lines
    assert lines[0].split()[0] in ("DRIFT", "HASH")  # 'one' deploys the same file when both chose it


@pytest.mark.parametrize("text,line", [
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\nthread = 1\n', "fleet.toml:4: unknown key 'thread' in [devices.a]; valid: device, budget_ms"),
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 0\n', "fleet.toml:3: budget_ms 0 in [devices.a] is invalid; valid: a number > 0"),
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\npercentile = "p42"\n', "percentile 'p42' in [devices.a] is invalid; valid: p50, p90, p95, p99, mean"),
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\nprecisions = ["fp8"]\n', "precision 'fp8' in [devices.a] is invalid; valid: fp32, fp16, int8"),
    ('arch = "us_resnet_mini"\n[devices.a]\ndevice = "tpu"\nbudget_ms = 2\n', "[devices.a]: unknown device 'tpu'; valid: cpu, cuda, jetson"),
    ('arch = "us_resnet_mini"\n', "no devices; add one [devices.NAME] table per device"),
    ('checkpoint = "missing.pt"\n[devices.a]\nbudget_ms = 2\n', "checkpoint 'missing.pt' not found"),
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\nswitchable = true\nprecisions = ["fp32", "int8"]\n', "switchable = true in [devices.a] needs one precision, fp32 or fp16"),
    ('arch = "us_resnet_mini"\n[devices.a\n', "invalid TOML"),
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\ndeploy_path = "model.onnx"\n', "fleet.toml:4: deploy_path 'model.onnx' in [devices.a] is invalid; valid: the absolute path of the deployed file on that device"),
    ('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\ndeploy_path = 5\n', "fleet.toml:4: key 'deploy_path' in [devices.a] must be a string, got 5"),
])
def test_bad_fleet_files_are_one_line_exit_2_and_write_nothing(tmp_path, text, line):
    (tmp_path / "fleet.toml").write_text(text)
    res = subprocess.run([*US3L, "fleet", "plan", "fleet.toml", "-o", "out"], capture_output=True, text=True,
                         env={**ENV, "XDG_CONFIG_HOME": str(tmp_path / "cfg")}, cwd=tmp_path, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and line in err[0], err
    assert not (tmp_path / "out").exists()


def test_bad_check_input_is_one_line_exit_2(tmp_path):
    (tmp_path / "m.json").write_text('{"not": "a manifest"}')
    res = run("fleet", "check", str(tmp_path / "m.json"))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'm.json'}: not a fleet manifest (no \"devices\" list); valid: the manifest.json "
        "'us3l fleet plan' writes"]
    res = run("fleet", "check", str(tmp_path / "m.json"), "--threshold", "0")
    assert res.returncode == 2 and "--threshold" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_check_deployed_hashes_and_measures_that_file(planned, tmp_path):
    """--deployed NAME=PATH without a re-plan: that file is hashed and measured (the plan copy is not
    read), JSON says what was verified; a tampered deployed copy is HASH naming the device, exit 1."""
    import shutil

    plan = tmp_path / "plan"
    shutil.copytree(planned["plan"], plan)
    data = json.loads((plan / "manifest.json").read_text())
    one = next(d for d in data["devices"] if d["device"] == "one")
    deployed = tmp_path / "device" / "model.onnx"
    deployed.parent.mkdir()
    shutil.copyfile(plan / one["artifact"]["file"], deployed)
    res = run("fleet", "check", str(plan / "manifest.json"), "--threshold", "1000", "--json",
              "--deployed", f"one={deployed}")
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    by = {d["device"]: d for d in json.loads(res.stdout)["devices"]}
    assert (by["one"]["status"], by["one"]["verified"], by["one"]["deploy_path"]) == ("OK", "deployed", str(deployed))
    assert by["one"]["message"].endswith(f"sha256 verified: {deployed} on the device")
    assert (by["two"]["status"], by["two"]["verified"], by["two"]["deploy_path"]) == ("OK", "plan-copy", None)

    raw = bytearray(deployed.read_bytes())
    raw[-1] ^= 0xFF  # the deployed copy, not the plan copy
    deployed.write_bytes(bytes(raw))
    res = run("fleet", "check", str(plan / "manifest.json"), "--threshold", "1000", "--deployed", f"one={deployed}")
    assert res.returncode == 1
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("HASH") and f"one: {deployed} on localhost: sha256 " in lines[0], lines
    assert one["artifact"]["sha256"][:12] in lines[0] and lines[1].startswith("OK") and "two:" in lines[1], lines


@pytest.mark.parametrize("value,line", [
    ("nope=/opt/m.onnx", "--deployed nope=...: no device 'nope' in "),
    ("one=m.onnx", "--deployed one=m.onnx: 'm.onnx' is invalid; valid: the absolute path of the deployed file"),
    ("one", "--deployed 'one' is invalid; valid: NAME=PATH"),
])
def test_bad_deployed_is_one_line_exit_2_and_writes_nothing(planned, tmp_path, value, line):
    import shutil

    plan = tmp_path / "plan"
    shutil.copytree(planned["plan"], plan)
    before = sorted((p.relative_to(plan), p.stat().st_mtime_ns) for p in plan.rglob("*"))
    res = run("fleet", "check", str(plan / "manifest.json"), "--deployed", value)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(err) == 1 and line in err[0], res.stderr
    assert res.stdout == "" and sorted((p.relative_to(plan), p.stat().st_mtime_ns) for p in plan.rglob("*")) == before


def test_ctrl_c_leaves_the_previous_manifest(planned, tmp_path):
    import shutil

    plan = tmp_path / "plan"
    shutil.copytree(planned["plan"], plan)
    before = (plan / "manifest.json").read_bytes()
    # the same fleet, timed long enough (2 s a point) that the second device is still measuring when
    # the signal comes, however loaded the machine (at 0.05 s a point the plan could finish first)
    shutil.copy(planned["root"] / "devices.toml", tmp_path / "devices.toml")
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(planned["fleet"].read_text().replace("duration_s = 0.05", "duration_s = 2.0"))
    # SIGINT as at a terminal: a shell's background job (`cmd &`, nohup) passes SIGINT on ignored,
    # and Python then never raises KeyboardInterrupt (that made this test fail under `.ci/run &`)
    proc = subprocess.Popen([*US3L, "fleet", "plan", str(fleet), "-o", str(plan), "--force"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    report = plan / "bench" / "devices" / "one" / "report.json"
    stamp = report.stat().st_mtime_ns
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and report.stat().st_mtime_ns == stamp:
        time.sleep(0.05)  # the first device is done: the run is in the middle of the fleet
    assert proc.poll() is None, "the plan ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "interrupted", err[-2000:]
    assert (plan / "manifest.json").read_bytes() == before
    assert not [p.name for p in plan.glob(".*.tmp")]


def test_plan_table_fits_80_columns_and_json_is_the_manifest(planned, tmp_path):
    import shutil

    plan = tmp_path / "plan"
    shutil.copytree(planned["plan"], plan)
    narrow = subprocess.run([*US3L, "fleet", "plan", str(planned["fleet"]), "-o", str(plan)], capture_output=True,
                            text=True, env={**ENV, "COLUMNS": "80"}, timeout=240)
    table = [ln for ln in narrow.stdout.splitlines() if ln.startswith(("┃", "│", "┏", "└"))]
    assert table and all(len(ln) <= 80 for ln in table) and "…" not in narrow.stdout, narrow.stdout
    assert "not shown at this width" in " ".join(narrow.stdout.split())  # the columns given up are named
    as_json = run("fleet", "plan", str(planned["fleet"]), "-o", str(plan), "--json")
    assert json.loads(as_json.stdout)["devices"] == json.loads((plan / "manifest.json").read_text())["devices"]


def test_a_switchable_device_gets_the_width_index_bench_would_choose(tmp_path, validate_manifest):
    """One switchable file for the device (exported once into the plan), chosen by the same rule as
    'us3l bench FILE_switchable.onnx --budget-ms' on it, and checked through its width_index."""
    import us3l

    fleet = tmp_path / "fleet.toml"
    fleet.write_text('''arch = "us_resnet_mini"
widths = "0.25,1.0"

[timing]
duration_s = 0.05
rounds = 2
warmup_ms = 5

[devices.phone]
device = "cpu"
threads = 1
budget_ms = 1000
percentile = "p50"
switchable = true
''')
    res = run("fleet", "plan", str(fleet), "-o", str(tmp_path / "plan"))
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    data = validate_manifest(tmp_path / "plan" / "manifest.json")
    phone = data["devices"][0]
    assert phone["artifact"]["file"].endswith("_switchable.onnx") and phone["artifact"]["width_index"] == 1
    assert (phone["width"], phone["precision"]) == (1.0, "fp32")
    alone = us3l.bench(tmp_path / "plan" / phone["artifact"]["file"], device="cpu", threads=1, budget_ms=1000,
                       metric="p50", plot=False, out=tmp_path / "alone", duration_s=0.05, rounds=2, warmup_ms=5)
    assert alone.chosen is not None and (alone.chosen.width, alone.chosen.precision) == (1.0, "fp32")
    assert alone.report["deploy"]["width_index"] == phone["artifact"]["width_index"]
    check = run("fleet", "check", str(tmp_path / "plan" / "manifest.json"), "--threshold", "1000")
    assert check.returncode == 0 and check.stdout.startswith("OK"), check.stdout + check.stderr[-2000:]


def test_min_accuracy_without_a_measured_accuracy_is_not_planned(tmp_path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(fleet_text().replace('percentile = "p50"', 'percentile = "p50"\nmin_accuracy = 0.5'))
    res = run("fleet", "plan", str(fleet), "-o", str(tmp_path / "plan"), "--no-plot")
    assert res.returncode == 1
    devices = {d["device"]: d for d in json.loads((tmp_path / "plan" / "manifest.json").read_text())["devices"]}
    assert devices["one"]["planned"] is True and devices["two"]["planned"] is False
    assert "no measured accuracy < min_accuracy 0.5" in devices["two"]["reason"]
    assert "error: device two not planned" in res.stderr
