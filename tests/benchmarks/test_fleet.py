"""``us3l fleet plan`` / ``check`` end to end on three real devices: this machine's CPU at one and at
two threads (two profiles), and a device reached through the REAL sshd on 127.0.0.1 (the fixture of
test_remote_ssh.py; the onnxruntime agent runs there with this venv's python), plus a fourth device
whose ssh port is closed (unreachable). Tiny settings: an untrained us_resnet_mini, two widths.

The manifest's choice for each device must equal ``us3l bench --budget-ms`` on that device alone
(the API ``us3l.bench`` with the same options and the plan's lookup table, which is what
``us3l bench --out PLAN/bench`` reads).
"""

from __future__ import annotations

import getpass
import json
import shutil
import sys
from pathlib import Path

import pytest

from test_remote_ssh import SSHD, free_port, sshd  # noqa: F401  (the real sshd fixture)

from us3l.benchmarks.fleet import CheckConfig, FleetConfig, check_fleet, load_fleet, plan_fleet
from us3l.core.errors import ConfigError

pytestmark = pytest.mark.skipif(SSHD is None, reason="sshd not installed (Debian: apt-get install openssh-server)")

TIMING = {"duration_s": 0.05, "rounds": 2, "warmup_ms": 5}
WIDTHS = "0.25,1.0"


def write_devices(path: Path, sshd: dict, work: Path, port: int | None = None) -> Path:
    path.write_text(f"""[devices.loopback]
host = "127.0.0.1"
port = {port or sshd['port']}
user = "{getpass.getuser()}"
identity_file = "{sshd['identity']}"
known_hosts = "{sshd['known_hosts']}"
workdir = "{work}"
python = "{sys.executable}"
connect_timeout = 5

[devices.nowhere]
host = "127.0.0.1"
port = {free_port()}
user = "{getpass.getuser()}"
identity_file = "{sshd['identity']}"
known_hosts = "{sshd['known_hosts']}"
connect_timeout = 3
""")
    return path


def write_fleet(path: Path, budgets: dict[str, float]) -> Path:
    timing = "\n".join(f"{k} = {v}" for k, v in TIMING.items())
    path.write_text(f"""arch = "us_resnet_mini"
widths = "{WIDTHS}"
devices_file = "devices.toml"

[timing]
{timing}

[devices.cpu-1t]
device = "cpu"
threads = 1
budget_ms = {budgets['cpu-1t']}
percentile = "p50"
precisions = ["fp32", "int8"]

[devices.cpu-2t]
device = "cpu"
threads = 2
budget_ms = {budgets['cpu-2t']}
percentile = "p50"
precisions = ["fp32", "int8"]

[devices.edge]
device = "loopback"
threads = 1
budget_ms = {budgets['edge']}
percentile = "p50"

[devices.gone]
device = "nowhere"
budget_ms = 5
""")
    return path


def _between(front: list[dict]) -> float:
    """A budget between the two fastest front points whose p50 differ most (never on top of one)."""
    lat = sorted(p["latency_ms"] for p in front)
    if len(lat) < 2:
        return lat[0] * 2
    i = max(range(len(lat) - 1), key=lambda k: lat[k + 1] / lat[k])
    return round((lat[i] * lat[i + 1]) ** 0.5, 6)


@pytest.fixture(scope="module")
def plan(tmp_path_factory, sshd, validate_manifest):  # noqa: F811
    """Plan once with generous budgets (everything measured), then re-plan from the lookup table with
    budgets between front points, so that each device's choice is a real trade-off."""
    root = tmp_path_factory.mktemp("fleet")
    work = root / "remote-work"
    work.mkdir()
    write_devices(root / "devices.toml", sshd, work)
    fleet = write_fleet(root / "fleet.toml", {"cpu-1t": 1000, "cpu-2t": 1000, "edge": 1000})
    out = root / "plan"
    first = plan_fleet(FleetConfig(fleet, out))
    validate_manifest(out / "manifest.json")
    lut = json.loads((out / "bench" / "lut.json").read_text())
    budgets = {e["device"]: _between(e["front"]) for e in first.manifest["devices"] if e["planned"]}
    write_fleet(fleet, budgets)
    second = plan_fleet(FleetConfig(fleet, out))
    validate_manifest(out / "manifest.json")
    return {"root": root, "out": out, "fleet": fleet, "first": first, "second": second, "budgets": budgets,
            "lut_keys": set(lut["points"]), "work": work}


def test_every_reachable_device_is_planned_and_the_unreachable_one_is_not(plan):
    devices = {e["device"]: e for e in plan["second"].manifest["devices"]}
    assert list(devices) == ["cpu-1t", "cpu-2t", "edge", "gone"]
    assert all(devices[d]["planned"] for d in ("cpu-1t", "cpu-2t", "edge")), devices
    gone = devices["gone"]
    assert gone["planned"] is False and "unreachable" in gone["reason"] and "refused" in gone["reason"]
    assert [d["device"] for d in plan["second"].failed] == ["gone"]
    edge = devices["edge"]
    assert edge["runner"] == "onnxruntime-agent" and edge["fingerprint"]["target"].endswith(str(edge_port(plan)))
    assert devices["cpu-1t"]["threads"] == 1 and devices["cpu-2t"]["threads"] == 2
    assert list(plan["work"].iterdir()) == []  # the remote temp dir was removed


def edge_port(plan) -> int:
    text = (plan["root"] / "devices.toml").read_text()
    return int(text.split("port = ", 1)[1].split()[0])


def test_choice_per_device_equals_bench_budget_ms_on_that_device_alone(plan):
    import us3l

    spec = load_fleet(plan["fleet"])
    manifest = plan["second"].manifest
    for dev in spec.devices:
        entry = next(e for e in manifest["devices"] if e["device"] == dev.name)
        if dev.name == "gone":
            continue
        alone = us3l.bench(arch="us_resnet_mini", device=dev.device, devices_file=spec.devices_file, widths=WIDTHS,
                           budget_ms=dev.budget_ms, metric=dev.percentile, batches=(dev.batch,),
                           out=plan["out"] / "bench", precision=",".join(dev.precisions) or None,
                           threads=dev.threads, plot=False, **TIMING)
        assert alone.chosen is not None, (dev.name, alone.reason)
        assert (entry["width"], entry["precision"]) == (alone.chosen.width, alone.chosen.precision), dev.name
        assert entry["artifact"]["sha256"] == alone.report["deploy"]["sha256"]
        assert entry["choice"]["reason"] == alone.reason
    # the budgets sit between front points: not every device takes its widest, most faithful pair
    assert any((e["width"], e["precision"]) != (1.0, "fp32") for e in manifest["devices"] if e["planned"])


def test_replan_measures_nothing_new_and_keeps_the_artifacts_shared(plan):
    lut = json.loads((plan["out"] / "bench" / "lut.json").read_text())
    assert set(lut["points"]) == plan["lut_keys"]  # the re-plan (new budgets) reused every point
    exported = sorted(p.name for p in (plan["out"] / "bench" / "artifacts").glob("*.onnx"))
    assert exported == sorted({"us_resnet_mini_w0.25.onnx", "us_resnet_mini_w1.0.onnx",
                               "us_resnet_mini_w0.25_onnx_int8.onnx", "us_resnet_mini_w1.0_onnx_int8.onnx"}), exported


def test_plan_folder_holds_every_artifact_it_names(plan):
    from us3l.core.files import sha256_file

    out = plan["out"]
    manifest = plan["second"].manifest
    for e in manifest["devices"]:
        if not e["planned"]:
            continue
        f = out / e["artifact"]["file"]
        assert f.is_file() and sha256_file(f) == e["artifact"]["sha256"]
        assert e["latency_ms"]["ci95"]["p50"][0] <= e["latency_ms"]["p50"] <= e["latency_ms"]["ci95"]["p50"][1]
        assert e["accuracy"]["value"] is None and "untrained" in e["accuracy"]["why_null"]
        assert e["fingerprint"]["runtime"] == "onnxruntime" and e["fingerprint"]["runtime_version"]
        assert e["build_on_device"] is False
    csv = (out / "fleet.csv").read_text()
    assert csv.splitlines()[0].startswith("device,planned,reason") and len(csv.splitlines()) == 5
    assert str(out.resolve()) not in csv and (out / "fleet.png").stat().st_size > 10_000
    for report in (out / "bench" / "devices").glob("*/report.json"):
        assert str(out.resolve()) not in report.read_text()


def test_check_untouched_tampered_drifted_and_unreachable(plan, tmp_path, validate_manifest):
    copy = tmp_path / "plan"
    shutil.copytree(plan["out"], copy)
    manifest = copy / "manifest.json"
    devices = plan["root"] / "devices.toml"  # a moved plan folder names its profiles (--devices-file)
    records = check_fleet(CheckConfig(manifest, threshold_pct=1000.0, devices_file=devices))
    by = {r["device"]: r for r in records}
    assert [by[d]["status"] for d in ("cpu-1t", "cpu-2t", "edge", "gone")] == ["OK", "OK", "OK", "SKIPPED"], records
    assert by["edge"]["sha256_ok"] is True  # hashed on the device, after the upload

    data = json.loads(manifest.read_text())
    drifted = tmp_path / "drifted"
    shutil.copytree(copy, drifted)
    edge = next(e for e in data["devices"] if e["device"] == "edge")
    edge["latency_ms"]["p50"] /= 100.0  # an injected drift: the device is now 100x slower than planned
    (drifted / "manifest.json").write_text(json.dumps(data))
    validate_manifest(drifted / "manifest.json")
    by = {r["device"]: r for r in check_fleet(CheckConfig(drifted / "manifest.json", 1000.0, devices))}
    assert by["edge"]["status"] == "DRIFT" and by["edge"]["drift_pct"] > 1000 and by["edge"]["sha256_ok"] is True
    assert [by[d]["status"] for d in ("cpu-1t", "cpu-2t")] == ["OK", "OK"]

    cpu = next(e for e in data["devices"] if e["device"] == "cpu-1t")
    target = copy / cpu["artifact"]["file"]
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF  # a tampered artifact
    target.write_bytes(bytes(raw))
    by = {r["device"]: r for r in check_fleet(CheckConfig(manifest, threshold_pct=1000.0, devices_file=devices))}
    assert by["cpu-1t"]["status"] == "HASH" and by["cpu-1t"]["sha256_ok"] is False
    for other in ("cpu-2t", "edge"):  # a device deploying the same file fails too; the others pass
        same = next(e for e in data["devices"] if e["device"] == other)["artifact"]["sha256"] == cpu["artifact"]["sha256"]
        assert by[other]["status"] == ("HASH" if same else "OK"), by[other]

    # the device went away: unreachable, and every other device is still checked
    closed = write_devices(tmp_path / "closed.toml", {"port": 0, "identity": "x", "known_hosts": str(tmp_path / "kh")},
                           tmp_path, port=free_port())
    by = {r["device"]: r for r in check_fleet(CheckConfig(drifted / "manifest.json", 1000.0, closed))}
    assert by["edge"]["status"] == "UNREACHABLE" and "refused" in by["edge"]["message"]
    assert [by[d]["status"] for d in ("cpu-1t", "cpu-2t")] == ["OK", "OK"]


def test_a_misspelt_key_names_file_line_and_valid_keys(tmp_path):
    f = tmp_path / "fleet.toml"
    f.write_text('arch = "us_resnet_mini"\n\n[devices.a]\ndevice = "cpu"\nbudget_ms = 2\nprecison = ["fp32"]\n')
    with pytest.raises(ConfigError, match=r"fleet.toml:6: unknown key 'precison' in \[devices.a\]; valid: device, "
                                          r"budget_ms, percentile, batch, precisions"):
        load_fleet(f)
    f.write_text('arch = "us_resnet_mini"\nwidht = "0.5"\n[devices.a]\nbudget_ms = 2\n')
    with pytest.raises(ConfigError, match=r"fleet.toml:2: unknown key 'widht' in the top level; valid: checkpoint"):
        load_fleet(f)
    f.write_text('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = -1\n')
    with pytest.raises(ConfigError, match=r"fleet.toml:3: budget_ms -1 in \[devices.a\] is invalid"):
        load_fleet(f)
