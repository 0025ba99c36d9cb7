"""Checks of numeric options, shared by every command's config: one line naming the option and
what is valid. NaN and infinities fail every check (``--budget-ms nan`` must not mean "no limit")."""

from __future__ import annotations

import math

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
