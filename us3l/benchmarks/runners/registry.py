"""The runner registry: ``register_runner`` / ``get_runner`` / ``list_runners``."""

from __future__ import annotations

from collections.abc import Callable

from us3l.core.registry import Registry

from .base import Runner


def _load_builtin() -> None:
    from . import onnxruntime_runner, tensorrt_runner, torch_runner, trtexec_runner  # noqa: F401
    from ..remote import agent_runner  # noqa: F401


_RUNNERS: Registry[type[Runner]] = Registry("runner", _load_builtin)


def register_runner(name: str) -> Callable[[type[Runner]], type[Runner]]:
    """Class decorator registering a :class:`Runner` under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return _RUNNERS.register(name)


def list_runners() -> list[str]:
    """Sorted names of all registered runners."""
    return _RUNNERS.names()


def get_runner(name: str) -> type[Runner]:
    """The runner class registered under ``name``.

    Raises:
        UnknownNameError: unknown runner (the message lists the valid ones).
    """
    return _RUNNERS.get(name)
