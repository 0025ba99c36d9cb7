"""One registry type for every concept (architectures, exporters, runners, recipes).

``register`` raises on a duplicate name; ``get`` raises :class:`UnknownNameError` listing the
valid names; ``names`` is sorted. Built-in entries are imported lazily by an optional loader, so
heavy modules load only when the registry is first used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> entry mapping for one kind of thing.

    Args:
        kind: what the entries are, for error messages ("architecture", "export format", ...).
        loader: called once before the first lookup to import the modules that register built-ins.

    Examples:
        >>> widgets: Registry[type] = Registry("widget")
        >>> @widgets.register("plain")
        ... class Plain: ...
        >>> widgets.get("plain").name, widgets.names()
        ('plain', ['plain'])
    """

    def __init__(self, kind: str, loader: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering an entry under ``name`` (classes also get a ``name`` attribute).

        Raises:
            ValueError: ``name`` is already registered.
        """

        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"a {self.kind} is already registered under the name {name!r}")
            if isinstance(entry, type):
                entry.name = name  # type: ignore[attr-defined]
            self._entries[name] = entry
            return entry

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: unknown name (the message lists the valid ones).
        """
        self._load()
        if name not in self._entries:
            raise unknown_name(self.kind, name, list(self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        """Sorted registered names."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries
