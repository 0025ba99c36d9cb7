"""ONNX Runtime as installed here: import it lazily, and say exactly how to fix a wrong install.

ONNX Runtime ships as two distributions, ``onnxruntime`` (CPU) and ``onnxruntime-gpu`` (CUDA and
TensorRT execution providers). Both install the same ``onnxruntime`` module, so with both present
one overwrites the other's files and the providers are whichever was installed last. The
package's extras, named after them (``[onnxruntime]`` and ``[onnxruntime-gpu]``), pick one.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from us3l.core.errors import BackendUnavailableError

INSTALL_CPU = "pip install 'us3l-deploy[onnxruntime]'"
INSTALL_GPU = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'us3l-deploy[onnxruntime-gpu]'"


def installed_distributions() -> list[str]:
    """The ONNX Runtime distributions pip has installed (``onnxruntime``, ``onnxruntime-gpu``, ...)."""
    found = []
    for name in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"):
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return found


def import_onnxruntime() -> Any:
    """``import onnxruntime``, or one line naming the install command.

    Raises:
        BackendUnavailableError: onnxruntime is not importable.
    """
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailableError(
            f"onnxruntime is not installed; {INSTALL_CPU} (or 'us3l-deploy[onnxruntime-gpu]' on a CUDA host)") from None
    return onnxruntime


def provider_problem(device: str, available: list[str], distributions: list[str]) -> str | None:
    """Why ``device`` cannot run with these providers, with the exact fix; None when it can.

    Examples:
        >>> provider_problem("cuda", ["CPUExecutionProvider"], ["onnxruntime"])  # doctest: +ELLIPSIS
        'this onnxruntime build is CPU-only (...); pip uninstall -y onnxruntime onnxruntime-gpu && pip install ...'
    """
    if device != "cuda" or "CUDAExecutionProvider" in available:
        return None
    have = ", ".join(available) or "none"
    if len([d for d in distributions if d.startswith("onnxruntime")]) > 1:
        return (f"both {' and '.join(distributions)} are installed and overwrite each other's files "
                f"(providers now: {have}); {INSTALL_GPU}")
    if "onnxruntime-gpu" in distributions:
        return (f"onnxruntime-gpu is installed but its CUDA provider did not load (providers: {have}); check that "
                "the CUDA and cuDNN versions it was built for are installed (onnxruntime.preload_dlls() reports them)")
    return f"this onnxruntime build is CPU-only (providers: {have}); {INSTALL_GPU}"


def check_device(device: str) -> Any:
    """Import onnxruntime and make sure it can run on ``device`` (``cpu`` or ``cuda``).

    Raises:
        BackendUnavailableError: not installed, or no CUDA provider for ``cuda`` (the fix is named).
    """
    ort = import_onnxruntime()
    problem = provider_problem(device, list(ort.get_available_providers()), installed_distributions())
    if problem:
        raise BackendUnavailableError(problem)
    return ort
