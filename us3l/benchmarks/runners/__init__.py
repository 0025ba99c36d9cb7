"""Benchmark runners and their registry (backends are imported lazily on activation)."""

from .base import LocalRunner, Runner, RunnerOptions, SweepResult, TimingConfig
from .registry import get_runner, list_runners, register_runner

__all__ = ["LocalRunner", "Runner", "RunnerOptions", "SweepResult", "TimingConfig", "get_runner", "list_runners",
           "register_runner"]
