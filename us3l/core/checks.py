"""Checks of numeric options, shared by every command's config: one line naming the option and
what is valid. NaN and infinities fail every check (``--budget-ms nan`` must not mean "no limit")."""

from __future__ import annotations

import math
import os

from .errors import ConfigError


def check_number(name: str, value: float | int | None, *, minimum: float | None = None, exclusive: bool = False,
                 maximum: float | None = None, integer: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a finite number within the bounds (``None`` passes).

    Args:
        name: the option as the user typed it (``--knn-k``).
        minimum / exclusive: lower bound, and whether it is excluded (``> 0`` vs ``>= 0``).
        maximum: inclusive upper bound.
        integer: the value must be a whole number.

    Examples:
        >>> check_number("--duration", float("nan"), minimum=0, exclusive=True)
        Traceback (most recent call last):
        ...
        us3l.core.errors.ConfigError: --duration nan is invalid; valid: a finite number > 0
    """
    if value is None:
        return
    kind = "an integer" if integer else "a finite number"
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive else '>='} {minimum:g}")
    if maximum is not None:
        bounds.append(f"<= {maximum:g}")
    valid = f"{kind} {' and '.join(bounds)}".strip()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} is invalid; valid: {valid}") from None
    ok = (math.isfinite(number) and (not integer or number == int(number))
          and (minimum is None or (number > minimum if exclusive else number >= minimum))
          and (maximum is None or number <= maximum))
    if not ok:
        raise ConfigError(f"{name} {value:g} is invalid; valid: {valid}" if isinstance(value, (int, float))
                          else f"{name} {value!r} is invalid; valid: {valid}")


def check_onnx_file(path: os.PathLike[str] | str, what: str = "artifact") -> None:
    """Raise :class:`ConfigError` (one line naming the file) unless ``path`` parses as an ONNX model.

    A truncated download, a sidecar or any other file given where an ``.onnx`` file belongs is
    reported as what it is, before its sidecar or metadata are consulted.
    """
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        return
    try:
        size = f"{os.path.getsize(path)} bytes"
    except OSError:
        size = "unreadable"
    try:
        onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, onnx's own errors, OSError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0] or type(exc).__name__
        raise ConfigError(f"{what} {path} cannot be read as ONNX ({size}; {first[:120]}); valid: an .onnx file "
                          "written by 'us3l export'") from None
