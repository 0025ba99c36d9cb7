"""trtexec: command lines per TensorRT version, ``--exportTimes`` traces and stdout parsing.

Pure functions only (the runner in ``runners/trtexec_runner.py`` executes them). Statistics come
from the raw per-iteration ``--exportTimes`` JSON; the stdout parser is the fallback and reads
every summary format of docs/deployment.md §5.3: the TRT 7 multi-line block, the TRT 8.x one-line
metrics (with ``End-to-End Host Latency``), TRT 8.4's single ``percentile(99%)``, TRT 8.6/10's
three percentiles, ``Average on N runs`` window lines, the CoV stability warning and the
``&&&& PASSED/RUNNING ... [TensorRT vNNNN]`` trailer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

from us3l.core.errors import ConfigError, US3LError
from us3l.core.precision import Precision

Version = tuple[int, int, int]

_TAG = re.compile(r"\[TensorRT v(\d+)\]")
_VERSION_LINE = re.compile(r"TensorRT version:\s*(\d+)\.(\d+)\.(\d+)")


def decode_version_tag(number: int) -> Version:
    """Decode trtexec's ``[TensorRT vNNNN]`` integer: 8401 -> (8, 4, 1); 100300 -> (10, 3, 0).

    TRT <= 9 encodes ``major*1000 + minor*100 + patch``; TRT >= 10 ``major*10000 + minor*100 + patch``.
    """
    if number >= 100000:
        return number // 10000, (number // 100) % 100, number % 100
    return number // 1000, (number // 100) % 10, number % 100


def parse_version(text: str) -> Version | None:
    """TensorRT version from trtexec output (trailer tag or ``TensorRT version:`` line), else ``None``."""
    m = _TAG.search(text)
    if m:
        return decode_version_tag(int(m.group(1)))
    m = _VERSION_LINE.search(text)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def shape_spec(name: str, dims: Sequence[int]) -> str:
    """``input:8x3x32x32`` (names with ``:`` or spaces are quoted the way trtexec expects)."""
    quoted = f"'{name}'" if re.search(r"[:,\s]", name) else name
    return f"{quoted}:{'x'.join(str(int(d)) for d in dims)}"


def precision_flags(precision: str, version: Version) -> list[str]:
    """Builder precision flags: ``--fp16``/``--int8`` on TRT <= 10, none on TRT >= 11 (strongly typed:
    the precision must already be in the ONNX).

    Raises:
        ConfigError: unknown precision.
    """
    plan = Precision.parse(precision).plan
    if version[0] >= 11:
        return []
    return list(plan.trtexec_flags)  # int8: --int8 --fp16 (unquantised layers in fp16)


def build_command(trtexec: str, onnx: str, engine: str, input_name: str, sample_dims: Sequence[int],
                  batches: Sequence[int], precision: str, version: Version,
                  workspace_mib: int | None = None, timing_cache: str | None = None,
                  calib: str | None = None) -> list[str]:
    """Argument list that builds ``engine`` from ``onnx`` with one profile covering ``batches``.

    Args:
        trtexec: path of the trtexec binary.
        onnx / engine: input model and output engine paths (on the machine that runs trtexec).
        input_name / sample_dims: the input tensor and its per-sample dims (no batch).
        batches: batch sizes to serve (min/opt/max shapes = min, max, max).
        precision / version: precision and TensorRT version (flags differ across versions).
        workspace_mib: workspace limit (``--memPoolSize`` from TRT 8.4, ``--workspace`` before).
        timing_cache: ``--timingCacheFile`` path.
        calib: INT8 calibration cache (``--calib``) for TensorRT <= 10; refused on >= 11 (Q/DQ there).

    Raises:
        ConfigError: ``calib`` without int8, or on TensorRT >= 11.
    """
    if calib and (not Precision.parse(precision).plan.calibrated or version[0] >= 11):
        raise ConfigError("a calibration cache applies to int8 on TensorRT <= 10 only; TensorRT >= 11 takes a Q/DQ ONNX")
    lo, hi = min(batches), max(batches)
    cmd = [trtexec, f"--onnx={onnx}", f"--saveEngine={engine}",
           f"--minShapes={shape_spec(input_name, (lo, *sample_dims))}",
           f"--optShapes={shape_spec(input_name, (hi, *sample_dims))}",
           f"--maxShapes={shape_spec(input_name, (hi, *sample_dims))}"]
    cmd += precision_flags(precision, version)
    if calib:
        cmd.append(f"--calib={calib}")
    if workspace_mib:
        cmd.append(f"--memPoolSize=workspace:{int(workspace_mib)}" if version >= (8, 4, 0)
                   else f"--workspace={int(workspace_mib)}")
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd.append("--skipInference" if version >= (8, 5, 0) else "--buildOnly")
    return cmd


def run_command(trtexec: str, engine: str, input_name: str, dims: Sequence[int], version: Version,
                warmup_ms: float, duration_s: float | None, iterations: int | None, export_times: str,
                idle_ms: float = 0.0, spin_wait: bool = True) -> list[str]:
    """Argument list that times ``engine`` at input ``dims`` and writes raw timings to ``export_times``.

    A fixed ``iterations`` count uses ``--duration=0``; a duration uses ``--iterations=1`` so the
    duration decides. ``--percentile=90,95,99`` is only passed where supported (TRT >= 8.6) so the
    stdout fallback carries p90/p95/p99.
    """
    cmd = [trtexec, f"--loadEngine={engine}", f"--shapes={shape_spec(input_name, dims)}",
           f"--warmUp={max(0, int(round(warmup_ms)))}"]
    if iterations:
        cmd += [f"--iterations={int(iterations)}", "--duration=0"]
    else:
        cmd += ["--iterations=1", f"--duration={max(0.001, float(duration_s or 0)):g}"]
    if spin_wait:
        cmd.append("--useSpinWait")
    if idle_ms:
        cmd.append(f"--idleTime={int(round(idle_ms))}")
    if version >= (8, 6, 0):
        cmd.append("--percentile=90,95,99")
    cmd.append(f"--exportTimes={export_times}")
    return cmd


def parse_export_times(text: str, field: str = "latencyMs") -> dict[str, list[float]]:
    """Raw per-iteration timings from a ``--exportTimes`` JSON trace.

    The trace is a list of per-iteration objects with ``startInMs``, ``endInMs``,
    ``startComputeMs``, ``endComputeMs``, ``startOutMs``, ``endOutMs``, ``inMs``, ``computeMs``,
    ``outMs``, ``latencyMs`` and ``endToEndMs`` (all ms; NVIDIA ``samples/trtexec/tracer.py``).

    Returns:
        ``{"latency": host latencies (``field``), "compute": GPU compute times}`` in ms.

    Raises:
        US3LError: not JSON, not a list of objects, or no iteration carries ``field``.
    """
    try:
        trace = json.loads(text)
    except json.JSONDecodeError as exc:
        raise US3LError(f"trtexec --exportTimes output is not JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(trace, dict):  # tolerate a wrapper object
        trace = next((v for v in trace.values() if isinstance(v, list)), [])
    if not isinstance(trace, list) or not all(isinstance(t, dict) for t in trace):
        raise US3LError("trtexec --exportTimes output is not a list of per-iteration objects")
    latency = [float(t[field]) for t in trace if field in t]
    if not latency:
        raise US3LError(f"trtexec --exportTimes trace has no {field!r} values ({len(trace)} entries)")
    compute = [float(t["computeMs"]) for t in trace if "computeMs" in t]
    return {"latency": latency, "compute": compute}


_PREFIX = r"^(?:\[[^\]]*\]\s*)*(?:\[[IWEV]\]\s*)?"
_METRIC = re.compile(_PREFIX + r"(Latency|End-to-End Host Latency|Enqueue Time|H2D Latency|GPU Compute Time|"
                     r"D2H Latency|Host Latency|GPU Compute):\s*(min\s*=.*)$")
_FIELD = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\))\s*=\s*([-+\d.eE]+)\s*ms")
_BLOCK_HEAD = re.compile(_PREFIX + r"(Host Latency|Enqueue Time|H2D Latency|GPU Compute|D2H Latency)\s*$")
_BLOCK_FIELD = re.compile(_PREFIX + r"(min|max|mean|median):\s*([-+\d.eE]+)\s*ms(?:\s*\(end to end\s*([-+\d.eE]+)\s*ms\))?")
_BLOCK_PCT = re.compile(_PREFIX + r"percentile:\s*([-+\d.eE]+)\s*ms at\s*(\d+(?:\.\d+)?)%"
                        r"(?:\s*\(end to end\s*([-+\d.eE]+)\s*ms at)?")
_THROUGHPUT = re.compile(_PREFIX + r"(?:Throughput|throughput):\s*([-+\d.eE]+)\s*qps")
_WALL = re.compile(_PREFIX + r"(?:Total Host Walltime|walltime):\s*([-+\d.eE]+)\s*s")
_GPU_TOTAL = re.compile(_PREFIX + r"Total GPU Compute Time:\s*([-+\d.eE]+)\s*s")
_AVG = re.compile(r"Average on (\d+) runs - GPU latency:\s*([-+\d.eE]+)\s*ms - Host latency:\s*([-+\d.eE]+)\s*ms"
                  r"\s*\((?:end to end\s*([-+\d.eE]+)\s*ms,\s*)?enqueue\s*([-+\d.eE]+)\s*ms\)")
_COV = re.compile(r"coefficient of variance\s*=\s*([-+\d.eE]+)%")
_RESULT = re.compile(r"&&&&\s+(PASSED|FAILED|RUNNING)\s+TensorRT\.trtexec")
_KEYS = {"Latency": "latency", "Host Latency": "latency", "End-to-End Host Latency": "end_to_end",
         "Enqueue Time": "enqueue", "H2D Latency": "h2d", "GPU Compute Time": "gpu_compute",
         "GPU Compute": "gpu_compute", "D2H Latency": "d2h"}


def _pct_key(p: str) -> str:
    value = float(p)
    return f"p{int(value)}" if value.is_integer() else f"p{value:g}"


def parse_stdout(text: str) -> dict:
    """Parse a trtexec log (any version in docs/deployment.md §5.3) into a summary dict.

    Returns:
        ``{"version", "result" ("PASSED"/"FAILED"/"RUNNING"/None), "throughput_qps",
        "walltime_s", "gpu_total_s", "metrics": {"latency"|"end_to_end"|"enqueue"|"h2d"|
        "gpu_compute"|"d2h": {"min","max","mean","median","p90","p95","p99"...}},
        "averages": [{"runs","gpu_ms","host_ms","end_to_end_ms","enqueue_ms"}], "cov_percent",
        "warnings"}`` (absent items are ``None`` / empty).
    """
    out: dict = {"version": parse_version(text), "result": None, "throughput_qps": None, "walltime_s": None,
                 "gpu_total_s": None, "metrics": {}, "averages": [], "cov_percent": None, "warnings": []}
    block: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if m := _RESULT.search(line):
            out["result"] = m.group(1) if out["result"] in (None, "RUNNING") else out["result"]
            continue
        if "[W]" in line and line.split("[W]", 1)[1].strip():
            out["warnings"].append(line.split("[W]", 1)[1].strip())
        if m := _COV.search(line):
            out["cov_percent"] = float(m.group(1))
        if m := _AVG.search(line):
            out["averages"].append({"runs": int(m.group(1)), "gpu_ms": float(m.group(2)), "host_ms": float(m.group(3)),
                                    "end_to_end_ms": float(m.group(4)) if m.group(4) else None,
                                    "enqueue_ms": float(m.group(5))})
            continue
        if m := _METRIC.match(line):
            fields = {}
            for name, pct, value in _FIELD.findall(m.group(2)):
                fields[_pct_key(pct) if pct else name] = float(value)
            out["metrics"][_KEYS[m.group(1)]] = fields
            block = None
            continue
        if m := _BLOCK_HEAD.match(line):
            block = _KEYS[m.group(1)]
            out["metrics"].setdefault(block, {})
            continue
        if block and (m := _BLOCK_FIELD.match(line)):
            out["metrics"][block][m.group(1)] = float(m.group(2))
            if m.group(3):
                out["metrics"].setdefault("end_to_end", {})[m.group(1)] = float(m.group(3))
            continue
        if block and (m := _BLOCK_PCT.match(line)):
            key = _pct_key(m.group(2))
            out["metrics"][block][key] = float(m.group(1))
            if m.group(3):
                out["metrics"].setdefault("end_to_end", {})[key] = float(m.group(3))
            continue
        if m := _THROUGHPUT.match(line):
            out["throughput_qps"] = float(m.group(1))
        elif m := _WALL.match(line):
            out["walltime_s"] = float(m.group(1))
        elif m := _GPU_TOTAL.match(line):
            out["gpu_total_s"] = float(m.group(1))
    return out


def summary_to_row(summary: dict, batch: int) -> dict:
    """Latency fields in report-row form from a parsed stdout summary (fallback path).

    Raises:
        US3LError: the log has no latency summary (trtexec failed or the format is unknown).
    """
    lat = summary["metrics"].get("latency") or summary["metrics"].get("gpu_compute")
    if not lat or "median" not in lat:
        raise US3LError("trtexec printed no latency summary; see its log (build failure or unknown format)")
    mean = lat.get("mean", lat["median"])
    row = {"n": None, "p50_ms": lat["median"], "mean_ms": mean, "min_ms": lat.get("min"), "max_ms": lat.get("max"),
           "std_ms": None, "cov": (summary["cov_percent"] / 100) if summary["cov_percent"] is not None else None,
           "throughput": batch * 1000.0 / mean if mean > 0 else math.inf, "batch": batch}
    for p in ("p90", "p95", "p99"):
        row[f"{p}_ms"] = lat.get(p)
    return row
