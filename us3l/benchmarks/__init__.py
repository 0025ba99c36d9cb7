"""Benchmarks: latency per width on a target device, a cached lookup table and the width choice.

Public API::

    from us3l.benchmarks import BenchConfig, run_bench
    result = run_bench(BenchConfig(arch="us_resnet18_cifar", widths="0.25:1.0:0.25", budget_ms=5.0))
    result.report["chosen"]

Runners (``list_runners()``): ``torch``, ``onnxruntime``, ``tensorrt``, ``trtexec`` and
``onnxruntime-agent`` (the remote ONNX Runtime agent). Devices: ``cpu``, ``cuda``, ``jetson`` and
TOML profiles (:mod:`us3l.benchmarks.devices`). Heavy backends are imported lazily.
"""

from .run import BenchResult, BenchRun, resolve_runner, run_bench
from .rows import CSV_COLUMNS, BenchRow
from .search import SearchOutcome
from .artifacts import BenchArtifact, ModelSource, prepare_artifacts
from .config import BenchConfig, parse_batches, parse_modes
from .devices import DeviceProfile, get_device, list_devices, load_profiles
from .lut import LatencyTable, default_cache_path
from .runners import LocalRunner, Runner, RunnerOptions, SweepResult, TimingConfig, get_runner, list_runners, register_runner
from .choice import bisect_widest, choose, distinct_configs, load_accuracy, pareto_front
from .stats import LatencyStats, compute_stats

__all__ = [
    "CSV_COLUMNS", "BenchArtifact", "BenchConfig", "BenchResult", "BenchRow", "BenchRun", "SearchOutcome", "DeviceProfile", "LatencyStats", "LatencyTable", "LocalRunner",
    "ModelSource", "Runner", "RunnerOptions", "SweepResult", "TimingConfig", "bisect_widest", "choose",
    "compute_stats", "default_cache_path", "distinct_configs", "get_device", "get_runner", "list_devices",
    "list_runners", "load_accuracy", "load_profiles", "pareto_front", "parse_batches", "parse_modes",
    "prepare_artifacts", "register_runner", "resolve_runner", "run_bench",
]
