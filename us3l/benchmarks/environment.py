"""Environment facts and the device fingerprint that keys the latency lookup table."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from importlib import metadata

# Facts that change latency; anything else (time, paths) stays out of the fingerprint.
FINGERPRINT_KEYS = ("target", "hostname", "machine", "cpu_model", "cpu_count", "processor", "platform",
                    "onnxruntime", "torch", "tensorrt", "trt_version", "nvpmodel_mode", "jetson_model", "gpu")


def cpu_model() -> str:
    """CPU model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def local_environment(runner: str = "") -> dict:
    """Facts about this machine and the libraries ``runner`` uses."""
    env = {"target": "localhost", "hostname": socket.gethostname(), "machine": platform.machine(),
           "platform": platform.platform(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
           "python": platform.python_version(), "numpy": _version("numpy")}
    if runner in ("onnxruntime", "onnxruntime-agent"):
        env["onnxruntime"] = _version("onnxruntime") or _version("onnxruntime-gpu")
    if runner == "torch":
        env["torch"] = _version("torch")
    if runner == "tensorrt":
        env["tensorrt"] = _version("tensorrt")
    return env


def fingerprint(env: dict) -> str:
    """Short stable hash of the latency-relevant facts in ``env``."""
    keyed = {k: env.get(k) for k in FINGERPRINT_KEYS if env.get(k) is not None}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
