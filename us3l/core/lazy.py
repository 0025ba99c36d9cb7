"""Lazy re-exports for package ``__init__`` files: a name is imported from its module on first use,
so importing a package stays cheap (no torch until something needs it)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` resolving ``name`` from ``package.exports[name]``.

    Examples:
        >>> __getattr__ = lazy_getattr("us3l.core", {"channels_at": "width"})
        >>> __getattr__("channels_at")(64, 0.5)
        32
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f".{exports[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
