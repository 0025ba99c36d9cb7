"""The one registry type: duplicates raise, unknown names list the valid ones, loaders run lazily."""

import pytest

from us3l.core.errors import UnknownNameError
from us3l.core.registry import Registry


def test_register_get_list_and_errors():
    calls = []
    reg: Registry = Registry("widget", loader=lambda: calls.append(1))

    @reg.register("b")
    class B:
        pass

    reg.register("a")(len)
    assert calls == []  # nothing loaded yet
    assert reg.names() == ["a", "b"] and reg.get("b") is B and B.name == "b"
    assert calls == [1]
    reg.names()
    assert calls == [1]  # loaded once
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(len)
    with pytest.raises(UnknownNameError, match="unknown widget 'c'; valid: a, b"):
        reg.get("c")
