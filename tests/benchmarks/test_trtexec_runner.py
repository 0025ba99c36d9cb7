"""The trtexec runner's plumbing, driven through ``run_bench`` on this machine.

trtexec, tegrastats and nvpmodel cannot run here (no GPU, no Jetson). A STAND-IN shell script
plays trtexec: it records its arguments, creates the ``--saveEngine`` file, prints the REAL
TensorRT 10 capture (NVIDIA/TensorRT#4177, see ``trtexec_captures.py``) and, in one variant,
writes the CONSTRUCTED ``--exportTimes`` example; a stand-in tegrastats prints the real Orin Nano
line quoted in docs/deployment.md §4. What is tested is our code around them: command lines, engine
build then timed rounds, trace parsing, the stdout fallback, power sampling and energy.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from us3l.benchmarks import BenchConfig, run_bench
from us3l.benchmarks.remote.executor import Executor
from us3l.benchmarks.remote.jetson import parse_nvpmodel, set_power_mode
from us3l.core.errors import ConfigError, RemoteError

from test_tegrastats import ORIN_NANO
from trtexec_captures import EXPORT_TIMES_CONSTRUCTED, TRT10


def stand_in(tmp: Path, write_times: bool) -> Path:
    (tmp / "capture.txt").write_text(TRT10)
    (tmp / "times.json").write_text(EXPORT_TIMES_CONSTRUCTED)
    copy = f'cp {tmp}/times.json "${{a#--exportTimes=}}"' if write_times else ":"
    script = tmp / "trtexec"
    script.write_text(f"""#!/bin/sh
echo "$*" >> {tmp}/calls.log
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
for a in "$@"; do
  case "$a" in
    --saveEngine=*) : > "${{a#--saveEngine=}}" ;;
    --onnx=*) cp "${{a#--onnx=}}" {tmp}/built.onnx ;;
    --calib=*) cp "${{a#--calib=}}" {tmp}/built.cache ;;
    --exportTimes=*) {copy} ;;
  esac
done
case "$*" in *--loadEngine=*) sleep 0.2; cat {tmp}/capture.txt ;; esac  # a timed run lasts a while
echo "&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec"
""")
    script.chmod(0o755)
    tegra = tmp / "tegrastats"
    tegra.write_text(f"#!/bin/sh\nwhile :; do echo '{ORIN_NANO}'; sleep 0.02; done\n")
    tegra.chmod(0o755)
    return script


def devices_file(tmp: Path, script: Path) -> Path:
    path = tmp / "devices.toml"
    path.write_text(f"""[devices.fakejet]
runner = "trtexec"
trtexec = "{script}"
tegrastats = "{tmp / 'tegrastats'}"
jetson = true
precision = "fp16"
""")
    return path


@pytest.mark.parametrize("write_times", [True, False], ids=["export-times", "stdout-fallback"])
def test_trtexec_runner_via_run_bench(tmp_path, fixture_exporter, write_times):
    script = stand_in(tmp_path, write_times)
    cfg = BenchConfig(arch="us_resnet_mini", device="fakejet", devices_file=devices_file(tmp_path, script),
                      widths="0.5,1.0", batches=(1, 4), rounds=2, warmup_ms=50, duration_s=0.2,
                      budget_ms=5.0, metric="p50", out_dir=tmp_path / "out")
    report = run_bench(cfg).report
    assert report["environment"]["trt_version"] == "10.3.0" and report["runner"] == "trtexec"
    rows = report["results"]
    assert len(rows) == 4 and {r["batch"] for r in rows} == {1, 4}
    calls = (tmp_path / "calls.log").read_text().splitlines()
    builds = [c for c in calls if "--saveEngine=" in c]
    runs = [c for c in calls if "--loadEngine=" in c]
    assert len(builds) == 2 and len(runs) == 2 * 2 * 2  # widths x batches x rounds
    assert all("--fp16" in b and "--minShapes=input:1x" in b and "--maxShapes=input:4x" in b for b in builds)
    assert all("--useSpinWait" in r and "--exportTimes=" in r and "--percentile=90,95,99" in r for r in runs)
    assert sum("--warmUp=50" in r for r in runs) == 4 and sum("--warmUp=20" in r for r in runs) == 4  # re-warm
    for r in rows:
        if write_times:  # our statistics over the raw trace [1.53, 1.63, 1.73] x 2 rounds
            assert r["source"] == "raw" and r["n"] == 6 and r["p50_ms"] == pytest.approx(1.63)
            assert r["gpu_compute_p50_ms"] == pytest.approx(1.6)
        else:  # parsed from the real TRT 10 summary
            assert r["source"] == "stdout" and r["p50_ms"] == 7.16092 and r["p95_ms"] == 10.8698
        assert r["power_mw"] == pytest.approx(5832.0)  # VDD_IN current of the Orin Nano line
        assert r["energy_mj"] == pytest.approx(5832.0 * r["mean_ms"] / 1000 / r["batch"])
    assert (report["chosen"] is not None) == write_times  # 1.63 ms fits 5 ms; 7.16 ms does not
    if not write_times:
        assert "fastest is width 0.5 at 7.161 ms" in report["choice"]["reason"]


class _Canned(Executor):
    """An executor answering shell snippets from a table (nvpmodel cannot run here)."""

    def __init__(self, answers):
        super().__init__()
        self.answers, self.scripts = answers, []

    def run_shell(self, script, timeout=None, check=True):
        self.scripts.append(script)
        for needle, (rc, out) in self.answers.items():
            if needle in script:
                return subprocess.CompletedProcess(script, rc, out, "")
        return subprocess.CompletedProcess(script, 127, "", "not found")

    def put(self, local, remote):
        raise NotImplementedError

    def get(self, remote, local):
        raise NotImplementedError

    def describe(self):
        return "jetson-test"


def test_power_mode_needs_passwordless_sudo():
    ex = _Canned({"nvpmodel -m": (1, "sudo: a password is required\n")})
    with pytest.raises(RemoteError, match="needs passwordless sudo for nvpmodel") as exc:
        set_power_mode(ex, 2)
    assert "\n" not in str(exc.value) and "sudo -n nvpmodel -m 2" in ex.scripts[0]


def test_power_mode_switch_records_state():
    ex = _Canned({"nvpmodel -m": (0, ""), "nvpmodel -q": (0, "NV Fan Mode:quiet\nNV Power Mode: MAXN_SUPER\n2\n"),
                  "jetson_clocks --show": (0, "SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano\n"),
                  "device-tree/model": (0, "NVIDIA Jetson Orin Nano Developer Kit")})
    state = set_power_mode(ex, 2)
    assert state["nvpmodel"] == {"name": "MAXN_SUPER", "id": 2}
    assert state["jetson_model"] == "NVIDIA Jetson Orin Nano Developer Kit" and "tegra234" in state["jetson_clocks"]
    assert parse_nvpmodel("garbage") == {"name": None, "id": None}


def test_trt11_strongly_typed_fp16_converts_the_onnx_instead_of_flags(tmp_path, fixture_exporter):
    script = stand_in(tmp_path, write_times=True)
    devices = devices_file(tmp_path, script)
    devices.write_text(devices.read_text() + 'trt_version = "11.0.0"\n')
    cfg = BenchConfig(arch="us_resnet_mini", device="fakejet", devices_file=devices, widths="0.5", rounds=1,
                      warmup_ms=10, duration_s=0.1, out_dir=tmp_path / "out")
    report = run_bench(cfg).report
    assert report["environment"]["trt_version"] == "11.0.0" and report["results"][0]["p50_ms"] == pytest.approx(1.63)
    build = next(c for c in (tmp_path / "calls.log").read_text().splitlines() if "--saveEngine=" in c)
    assert "--fp16" not in build and "_fp16.onnx" in build  # precision baked into the graph, no builder flag
    int8 = BenchConfig(arch="us_resnet_mini", device="fakejet", devices_file=devices, widths="0.5", precision="int8",
                       out_dir=tmp_path / "out8")
    with pytest.raises(ConfigError, match="calibration from real images"):  # the stand-in export has no ranges
        run_bench(int8)


@pytest.mark.parametrize("version", ["10.3.0", "11.0.0"])
def test_trtexec_int8_uses_a_calibration_cache_or_qdq_by_version(tmp_path, version):
    """Real INT8 export (ONNX Runtime, calibrated at export); trtexec is the stand-in script."""
    import onnx

    script = stand_in(tmp_path, write_times=True)
    devices = devices_file(tmp_path, script)
    devices.write_text(devices.read_text().replace('precision = "fp16"', 'precision = "int8"')
                       + f'trt_version = "{version}"\n')
    cfg = BenchConfig(arch="us_resnet_mini", device="fakejet", devices_file=devices, widths="0.5", rounds=1,
                      warmup_ms=10, duration_s=0.1, out_dir=tmp_path / "out")
    row = run_bench(cfg).report["results"][0]
    build = next(c for c in (tmp_path / "calls.log").read_text().splitlines() if "--saveEngine=" in c)
    onnx_file = str(tmp_path / "built.onnx")  # the stand-in keeps copies of what it was given
    if version.startswith("10"):
        assert "--int8" in build and "--fp16" in build and row["int8_path"] == "calibration-cache"
        assert any(a.startswith("--calib=") for a in build.split())
        cache = tmp_path / "built.cache"
        lines = cache.read_text().splitlines()
        assert lines[0] == "TRT-100300-EntropyCalibration2" and any(ln.startswith("input: ") for ln in lines[1:])
        assert all(len(ln.rsplit(": ", 1)[1]) == 8 for ln in lines[1:])  # float32 scale as 8 hex digits
        graph = onnx.load(onnx_file).graph  # the FP32 ONNX: TensorRT <= 10 quantises with the cache
        assert not any(n.op_type == "QuantizeLinear" for n in graph.node)
    else:
        assert not any(a in build for a in ("--int8", "--fp16", "--calib")) and row["int8_path"] == "qdq"
        graph = onnx.load(onnx_file).graph
        zero_points = {i.name: i for i in graph.initializer if "zero_point" in i.name}
        assert any(n.op_type == "QuantizeLinear" for n in graph.node) and zero_points
        assert all(onnx.numpy_helper.to_array(z).dtype.name == "int8" and not onnx.numpy_helper.to_array(z).any()
                   for z in zero_points.values())  # symmetric int8: what TensorRT's explicit quantization takes


def test_power_mode_ladder_restores_the_original_mode(tmp_path, fixture_exporter, monkeypatch):
    """--power-modes with STAND-IN sudo/nvpmodel on PATH (no Jetson here): each mode is set with
    ``sudo -n nvpmodel -m N``, measured, recorded, and the original mode is restored afterwards."""
    script = stand_in(tmp_path, write_times=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    state = tmp_path / "mode"
    state.write_text("0")
    (bin_dir / "sudo").write_text('#!/bin/sh\n[ "$1" = "-n" ] && shift\nexec "$@"\n')
    (bin_dir / "nvpmodel").write_text(f"""#!/bin/sh
echo "nvpmodel $*" >> {tmp_path}/modes.log
case "$1" in
  -q) echo "NV Power Mode: MODE$(cat {state})"; cat {state}; echo ;;
  -m) echo "$2" > {state} ;;
esac
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    cfg = BenchConfig(arch="us_resnet_mini", device="fakejet", devices_file=devices_file(tmp_path, script),
                      widths="0.5,1.0", rounds=1, warmup_ms=10, duration_s=0.1, power_modes=(1, 2),
                      budget_ms=5.0, metric="p50", out_dir=tmp_path / "out")
    report = run_bench(cfg).report
    assert sorted({r["power_mode"] for r in report["results"]}) == [1, 2] and len(report["results"]) == 4
    assert report["environment"]["power_mode_states"]["2"]["nvpmodel"] == {"name": "MODE2", "id": 2}
    assert report["policy"] == {"1": 1.0, "2": 1.0}
    sets = [ln for ln in (tmp_path / "modes.log").read_text().splitlines() if " -m " in ln]
    assert sets == ["nvpmodel -m 1", "nvpmodel -m 2", "nvpmodel -m 0"]  # ladder, then the original back
    assert state.read_text().strip() == "0"
