"""``us3l fleet plan`` / ``check`` end to end on three real devices: this machine's CPU at one and at
two threads (two profiles), and a device reached through the REAL sshd on 127.0.0.1 (the fixture of
tests/real_sshd.py; the onnxruntime agent runs there with this venv's python), plus a fourth device
whose ssh port is closed (unreachable). Tiny settings: an untrained us_resnet_mini, two widths.

The manifest's choice for each device must equal ``us3l bench --budget-ms`` on that device alone
(the API ``us3l.bench`` with the same options and the plan's lookup table, which is what
``us3l bench --out PLAN/bench`` reads).
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from real_sshd import SSHD, free_port, sshd  # noqa: F401  (the real sshd fixture)

from us3l.fleet import CheckConfig, FleetConfig, check_fleet, load_fleet, plan_fleet
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


def _fleet_with_deploy_paths(plan, folder: Path, paths: dict[str, Path]) -> Path:
    """The plan's fleet file with ``deploy_path`` in the named devices' tables (moved to ``folder``)."""
    text = plan["fleet"].read_text().replace('devices_file = "devices.toml"',
                                              f'devices_file = "{plan["root"] / "devices.toml"}"')
    for name, path in paths.items():
        text = text.replace(f"[devices.{name}]\n", f'[devices.{name}]\ndeploy_path = "{path}"\n')
    fleet = folder / "fleet.toml"
    fleet.write_text(text)
    return fleet


def _cli_check(manifest: Path, devices: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "us3l.cli.main", "fleet", "check", str(manifest), "--threshold",
                           "1000", "--devices-file", str(devices), *extra], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "400"}, timeout=300)


def test_check_hashes_and_measures_the_deployed_file_on_each_device(plan, tmp_path, validate_manifest):
    """deploy_path on the ssh device and on a local one: that very file is hashed on the device and
    measured in place (the plan copy is neither uploaded nor read); a tampered or missing deployed file
    is HASH naming the device and the path, and the other devices are still checked."""
    out = tmp_path / "plan"
    shutil.copytree(plan["out"], out)  # with its lookup table: the re-plan measures nothing
    where = {"edge": tmp_path / "device" / "opt" / "edge.onnx", "cpu-1t": tmp_path / "device" / "cpu-1t.onnx"}
    plan_fleet(FleetConfig(_fleet_with_deploy_paths(plan, tmp_path, where), out, plot=False))
    data = validate_manifest(out / "manifest.json")
    entries = {e["device"]: e for e in data["devices"]}
    assert {n: entries[n]["artifact"].get("deploy_path") for n in ("cpu-1t", "cpu-2t", "edge")} == {
        "cpu-1t": str(where["cpu-1t"]), "cpu-2t": None, "edge": str(where["edge"])}
    assert str(where["edge"]) in (out / "fleet.csv").read_text()
    for name, path in where.items():  # deployed by hand, as a deployment system would
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / entries[name]["artifact"]["file"], path)
    devices = plan["root"] / "devices.toml"
    manifest = out / "manifest.json"

    # the deployed files are verified and measured even with their plan copies gone
    gone = {entries[n]["artifact"]["file"] for n in where}
    for rel in gone:
        (out / rel).unlink()
    by = {r["device"]: r for r in check_fleet(CheckConfig(manifest, threshold_pct=1000.0, devices_file=devices))}
    for name in where:
        assert by[name]["status"] == "OK" and by[name]["sha256_ok"] is True, by[name]
        assert (by[name]["verified"], by[name]["deploy_path"]) == ("deployed", str(where[name]))
        assert by[name]["message"].endswith(f"sha256 verified: {where[name]} on the device"), by[name]["message"]
    two = by["cpu-2t"]
    assert two["verified"] == "plan-copy" and two["deploy_path"] is None
    assert two["status"] == ("HASH" if entries["cpu-2t"]["artifact"]["file"] in gone else "OK"), two
    assert by["gone"]["status"] == "SKIPPED" and by["gone"]["verified"] is None
    for rel in gone:
        shutil.copyfile(plan["out"] / rel, out / rel)

    # the deployed copy tampered on the ssh device, the local one deleted: HASH for both, exit 1
    raw = bytearray(where["edge"].read_bytes())
    raw[-1] ^= 0xFF
    where["edge"].write_bytes(bytes(raw))
    where["cpu-1t"].unlink()
    res = _cli_check(manifest, devices)
    assert res.returncode == 1, res.stdout + res.stderr[-2000:]
    lines = {ln.split()[1].rstrip(":"): ln for ln in res.stdout.strip().splitlines()}
    edge, cpu = lines["edge"], lines["cpu-1t"]
    assert edge.startswith("HASH") and f"{where['edge']} on " in edge, edge
    assert entries["edge"]["artifact"]["sha256"][:12] in edge and "on the device" in edge
    assert cpu.startswith("HASH") and f"{where['cpu-1t']} is MISSING on localhost" in cpu, cpu
    assert lines["cpu-2t"].startswith("OK") and "sha256 verified: the plan copy" in lines["cpu-2t"]
    assert lines["gone"].startswith("SKIPPED")

    # deleted on the ssh device: HASH (missing); --deployed names another place for cpu-1t, no re-plan
    where["edge"].unlink()
    elsewhere = tmp_path / "elsewhere.onnx"
    shutil.copyfile(out / entries["cpu-1t"]["artifact"]["file"], elsewhere)
    res = _cli_check(manifest, devices, "--deployed", f"cpu-1t={elsewhere}", "--json")
    assert res.returncode == 1, res.stdout + res.stderr[-2000:]
    by = {d["device"]: d for d in json.loads(res.stdout)["devices"]}
    assert by["edge"]["status"] == "HASH" and by["edge"]["sha256_ok"] is False
    assert f"{where['edge']} is MISSING on " in by["edge"]["message"] and by["edge"]["verified"] == "deployed"
    assert by["cpu-1t"]["status"] == "OK" and (by["cpu-1t"]["verified"], by["cpu-1t"]["deploy_path"]) == (
        "deployed", str(elsewhere))
    assert by["cpu-2t"]["status"] == "OK" and by["cpu-2t"]["verified"] == "plan-copy"


def test_a_bad_deploy_path_is_refused_in_one_line(tmp_path):
    f = tmp_path / "fleet.toml"
    f.write_text('arch = "us_resnet_mini"\n[devices.a]\nbudget_ms = 2\ndeploy_path = "opt/model.onnx"\n')
    with pytest.raises(ConfigError, match=r"fleet.toml:4: deploy_path 'opt/model.onnx' in \[devices.a\] is invalid; "
                                          r"valid: the absolute path"):
        load_fleet(f)
    with pytest.raises(ConfigError, match=r"--deployed a=model.onnx: 'model.onnx' is invalid; valid: the absolute"):
        CheckConfig(tmp_path / "m.json", deployed=(("a", "model.onnx"),))
