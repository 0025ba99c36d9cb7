"""Architecture registry: ``register_model`` / ``get_model`` / ``list_models``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
from .base import SlimmableNet


def _load_builtin() -> None:
    # Importing the architecture modules registers them (done lazily to avoid import cycles).
    from . import mobilenet_v2, resnet, vit  # noqa: F401


_MODELS: Registry[Callable[..., SlimmableNet]] = Registry("architecture", _load_builtin)


def register_model(name: str) -> Callable[[Callable[..., SlimmableNet]], Callable[..., SlimmableNet]]:
    """Decorator registering a factory ``fn(**kwargs) -> SlimmableNet`` under ``name``.

    Raises:
        ValueError: ``name`` is already registered.
    """
    return _MODELS.register(name)


def list_models() -> list[str]:
    """Sorted names of all registered architectures."""
    return _MODELS.names()


def get_model(name: str, **kwargs: Any) -> SlimmableNet:
    """Build the architecture ``name`` with constructor arguments ``kwargs``.

    The returned model records ``arch`` and the full ``arch_kwargs`` (defaults included) so a
    checkpoint can rebuild it.

    Raises:
        UnknownNameError: unknown architecture (the message lists the valid ones).
        ConfigError: an argument the architecture does not take.

    Examples:
        >>> net = get_model("us_resnet18_cifar")
        >>> net.arch, net.max_feature_dim
        ('us_resnet18_cifar', 512)
    """
    fn = _MODELS.get(name)
    sig = inspect.signature(fn)
    unknown = sorted(set(kwargs) - set(sig.parameters))
    if unknown:
        raise ConfigError(
            f"architecture {name!r} takes no argument(s) {', '.join(unknown)}; valid: {', '.join(sig.parameters)}"
        )
    bound = sig.bind(**kwargs)
    bound.apply_defaults()
    model = fn(**bound.arguments)
    model.arch = name
    model.arch_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in bound.arguments.items()}
    return model

