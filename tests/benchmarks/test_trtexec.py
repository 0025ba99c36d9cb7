"""trtexec parsers on REAL captured outputs and command lines per TensorRT version (pure logic).

trtexec and TensorRT cannot run here (no GPU, not installable on the CI machines,
docs/deployment.md §15.3): the stdout parser is tested on the verbatim captures in ``trtexec_captures.py`` (sources
named there), ``--exportTimes`` on a constructed example of its documented format, and the command
lines as pure functions.
"""

import pytest

from us3l.benchmarks import trtexec
from us3l.benchmarks.stats import compute_stats
from us3l.core.errors import ConfigError, US3LError

from trtexec_captures import (EXPORT_TIMES_CONSTRUCTED, MISC_LINES, RUNNING_TRT102, TRT7_BLOCK, TRT8_NANO,
                               TRT10, TRT84_YOLOV7)


def test_trt10_three_percentiles_and_totals():
    s = trtexec.parse_stdout(TRT10)
    lat = s["metrics"]["latency"]
    assert lat == {"min": 5.38672, "max": 13.3664, "mean": 7.60628, "median": 7.16092, "p90": 10.2996,
                   "p95": 10.8698, "p99": 12.9675}
    assert s["metrics"]["gpu_compute"]["median"] == 7.14139
    assert s["metrics"]["h2d"]["p95"] == 0.0270996 and s["metrics"]["d2h"]["p99"] == 0.0994873
    assert s["metrics"]["enqueue"]["max"] == 15.0201
    assert s["throughput_qps"] == 130.298 and s["walltime_s"] == 3.00082 and s["gpu_total_s"] == 2.96536
    assert any("bound by Enqueue Time" in w for w in s["warnings"])
    row = trtexec.summary_to_row(s, batch=1)
    assert row["p50_ms"] == 7.16092 and row["p95_ms"] == 10.8698 and row["mean_ms"] == 7.60628


def test_trt8_nano_end_to_end_and_single_percentile():
    s = trtexec.parse_stdout(TRT8_NANO)
    assert s["metrics"]["latency"]["p99"] == 104.225 and "p95" not in s["metrics"]["latency"]
    assert s["metrics"]["end_to_end"] == {"min": 100.049, "max": 104.233, "mean": 101.438, "median": 101.105,
                                          "p99": 104.233}
    assert s["metrics"]["gpu_compute"]["median"] == 100.67
    assert s["throughput_qps"] == 9.85818 and s["walltime_s"] == 3.24604
    row = trtexec.summary_to_row(s, batch=1)
    assert row["p95_ms"] is None and row["p99_ms"] == 104.225


def test_trt84_percentile99_and_cov_warning():
    s = trtexec.parse_stdout(TRT84_YOLOV7)
    assert s["metrics"]["latency"]["median"] == 1.38037 and s["metrics"]["latency"]["p99"] == 1.55853
    assert s["metrics"]["h2d"] == {"min": 0.0, "max": 0.0, "mean": 0.0, "median": 0.0, "p99": 0.0}
    assert s["cov_percent"] == 2.10486
    assert trtexec.summary_to_row(s, 4)["cov"] == pytest.approx(0.0210486)


def test_trt7_block_with_end_to_end_and_window_averages():
    s = trtexec.parse_stdout(TRT7_BLOCK)
    assert s["metrics"]["latency"] == {"min": 1.64058, "max": 6.2915, "mean": 1.66069, "median": 1.65601,
                                       "p99": 1.67065}
    assert s["metrics"]["end_to_end"]["median"] == 3.01636 and s["metrics"]["end_to_end"]["p99"] == 3.03931
    assert s["throughput_qps"] == 0.0 and s["walltime_s"] == 3.00461
    assert len(s["averages"]) == 5
    assert s["averages"][0] == {"runs": 10, "gpu_ms": 1.56245, "host_ms": 1.65786, "end_to_end_ms": 2.76426,
                                "enqueue_ms": 0.943042}
    assert trtexec.summary_to_row(s, 1)["p50_ms"] == 1.65601


def test_average_line_without_end_to_end_cov_and_passed_trailer():
    s = trtexec.parse_stdout(MISC_LINES)
    assert s["averages"] == [{"runs": 10, "gpu_ms": 22.1307, "host_ms": 22.1888, "end_to_end_ms": None,
                              "enqueue_ms": 0.0616455}]
    assert s["cov_percent"] == 2.10486
    assert s["result"] == "PASSED" and s["version"] == (8, 4, 1)
    with pytest.raises(US3LError, match="no latency summary"):
        trtexec.summary_to_row(s, 1)


@pytest.mark.parametrize("text,version", [
    (MISC_LINES, (8, 4, 1)), (RUNNING_TRT102, (10, 2, 0)), ("[I] TensorRT version: 8.6.1\n", (8, 6, 1)),
    ("no version here", None)])
def test_versions(text, version):
    assert trtexec.parse_version(text) == version


def test_decode_version_tag_both_encodings():
    assert trtexec.decode_version_tag(8401) == (8, 4, 1)
    assert trtexec.decode_version_tag(8601) == (8, 6, 1)
    assert trtexec.decode_version_tag(100300) == (10, 3, 0)
    assert trtexec.decode_version_tag(110400) == (11, 4, 0)


def test_export_times_constructed_example():
    trace = trtexec.parse_export_times(EXPORT_TIMES_CONSTRUCTED)
    assert trace["latency"] == [1.53, 1.63, 1.73] and trace["compute"] == [1.5, 1.6, 1.7]
    assert compute_stats(trace["latency"]).p50_ms == pytest.approx(1.63)
    assert trtexec.parse_export_times(EXPORT_TIMES_CONSTRUCTED, field="endToEndMs")["latency"][0] == 1.55


@pytest.mark.parametrize("bad,msg", [("not json", "not JSON"), ('{"a": 1}', "no 'latencyMs'"),
                                     ("[1, 2]", "not a list of per-iteration"), ("[]", "no 'latencyMs'")])
def test_export_times_errors(bad, msg):
    with pytest.raises(US3LError, match=msg):
        trtexec.parse_export_times(bad)


def test_build_command_trt10_fp16():
    cmd = trtexec.build_command("/usr/src/tensorrt/bin/trtexec", "/t/m.onnx", "/t/m.engine", "input", (3, 32, 32),
                                [1, 8], "fp16", (10, 3, 0), workspace_mib=1024)
    assert cmd == ["/usr/src/tensorrt/bin/trtexec", "--onnx=/t/m.onnx", "--saveEngine=/t/m.engine",
                   "--minShapes=input:1x3x32x32", "--optShapes=input:8x3x32x32", "--maxShapes=input:8x3x32x32",
                   "--fp16", "--memPoolSize=workspace:1024", "--skipInference"]


def test_build_command_trt11_strongly_typed_has_no_precision_flags():
    for precision in ("fp16", "int8"):
        cmd = trtexec.build_command("trtexec", "m.onnx", "m.engine", "input", (3, 32, 32), [1], precision, (11, 0, 0))
        assert not any(a in cmd for a in ("--fp16", "--int8", "--best"))


def test_build_command_old_versions():
    cmd = trtexec.build_command("trtexec", "m.onnx", "m.engine", "in:0", (3, 8, 8), [4], "int8", (8, 2, 1),
                                workspace_mib=256)
    assert "--int8" in cmd and "--workspace=256" in cmd and "--buildOnly" in cmd
    assert "--minShapes='in:0':4x3x8x8" in cmd  # names with ':' are quoted the trtexec way
    cmd = trtexec.build_command("trtexec", "m.onnx", "m.engine", "input", (3, 8, 8), [1], "fp32", (8, 6, 1))
    assert not any(a.startswith(("--fp16", "--int8")) for a in cmd) and "--skipInference" in cmd


def test_precision_flags_validation():
    assert trtexec.precision_flags("fp16", (10, 3, 0)) == ["--fp16"]
    assert trtexec.precision_flags("fp32", (8, 6, 1)) == []
    with pytest.raises(ConfigError, match="valid: fp32, fp16, int8"):
        trtexec.precision_flags("bf16", (10, 0, 0))


def test_run_command_duration_and_iterations():
    cmd = trtexec.run_command("trtexec", "/t/e.engine", "input", (8, 3, 32, 32), (10, 3, 0), 200, 0.5, None,
                              "/t/times.json", idle_ms=0)
    assert cmd == ["trtexec", "--loadEngine=/t/e.engine", "--shapes=input:8x3x32x32", "--warmUp=200",
                   "--iterations=1", "--duration=0.5", "--useSpinWait", "--percentile=90,95,99",
                   "--exportTimes=/t/times.json"]
    cmd = trtexec.run_command("trtexec", "e", "input", (1, 3, 32, 32), (8, 4, 1), 20, None, 100, "t.json", idle_ms=2000)
    assert "--iterations=100" in cmd and "--duration=0" in cmd and "--idleTime=2000" in cmd
    assert not any(a.startswith("--percentile") for a in cmd)  # multi-percentile only from TRT 8.6
