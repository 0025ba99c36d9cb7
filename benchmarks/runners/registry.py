"""The runner registry: ``register_runner`` / ``get_runner`` / ``list_runners``."""

from __future__ import annotations

from collections.abc import Callable

from us3l_deploy.errors import unknown_name

from .base import Runner

_RUNNERS: dict[str, type[Runner]] = {}


def register_runner(name: str) -> Callable[[type[Runner]], type[Runner]]:
    """Class decorator registering a :class:`Runner` under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """

    def decorator(cls: type[Runner]) -> type[Runner]:
        if name in _RUNNERS:
            raise ValueError(f"a runner is already registered under the name {name!r}")
        cls.name = name
        _RUNNERS[name] = cls
        return cls

    return decorator


def _load_builtin() -> None:
    from . import onnxruntime_runner, tensorrt_runner, torch_runner, trtexec_runner  # noqa: F401
    from ..remote import agent_runner  # noqa: F401


def list_runners() -> list[str]:
    """Sorted names of all registered runners."""
    _load_builtin()
    return sorted(_RUNNERS)


def get_runner(name: str) -> type[Runner]:
    """The runner class registered under ``name``.

    Raises:
        UnknownNameError: unknown runner (the message lists the valid ones).
    """
    _load_builtin()
    if name not in _RUNNERS:
        raise unknown_name("runner", name, list(_RUNNERS))
    return _RUNNERS[name]
