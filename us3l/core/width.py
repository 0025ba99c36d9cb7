"""Channel arithmetic and width parsing: the one place that turns a width into channel counts.

Every slimmable layer, the static slicer, the MAC/parameter profiler and the exporters call
:func:`channels_at`; nothing else rounds channels.

The rule (docs/method.md §2.1, ``make_divisible`` with divisor 8 and lower bound 1):

1. round ``v`` to the nearest multiple of the divisor, halves up: ``m = d * floor((v + d/2) / d)``;
2. ``m = max(m, min_value)`` (``min_value`` is 1, not the divisor);
3. if ``m < 0.9 * v`` add one divisor (applied once).

Ratio form (MobileNetV2): ``channels = r * make_divisible(C * w / r)``.
"""

from __future__ import annotations

import math
import re

from .errors import WidthError

DEFAULT_DIVISOR = 8
DEFAULT_WIDTH_RANGE = (0.25, 1.0)
# Widths are compared after rounding to this many decimals (avoids 0.30000000000000004 keys).
WIDTH_DECIMALS = 6
#: Most widths one list or range may name (a ladder of 0.001 steps over [0.25, 1.0] has 751).
MAX_WIDTHS = 1001


def make_divisible(v: float, divisor: int = DEFAULT_DIVISOR, min_value: int = 1) -> int:
    """Round a raw channel count to the nearest multiple of ``divisor``, never more than 10 % below.

    Examples:
        >>> make_divisible(0.35 * 64), make_divisible(0.3 * 64), make_divisible(0.3 * 32)
        (24, 24, 16)
    """
    if divisor < 1:
        raise WidthError(f"channel divisor must be >= 1, got {divisor}")
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return int(new_v)


def channels_at(max_channels: int, width: float, ratio: int = 1, divisor: int = DEFAULT_DIVISOR) -> int:
    """Active channel count of a layer with ``max_channels`` channels at ``width``.

    Args:
        max_channels: the layer's full ("max") channel count.
        width: width multiplier in (0, 1].
        ratio: expansion ratio ``r`` of the ratio form (``r * make_divisible(C*w/r)``); 1 otherwise.
        divisor: channel divisor (8 per the method; 16/32 for hardware snapping).

    Returns:
        The active channel count, capped at ``max_channels`` (a layer can never grow).
    """
    c = ratio * make_divisible(max_channels * width / ratio, divisor)
    return int(min(c, max_channels))


def round_width(width: float) -> float:
    """Canonical float for a width (used as dictionary key and in file names)."""
    return round(float(width), WIDTH_DECIMALS)


def default_widths(lo: float, hi: float) -> list[float]:
    """The default evaluation ladder of a model trained on ``[lo, hi]``: its two ends plus
    0.25 / 0.5 / 0.75 / 1.0 where they fall inside the range."""
    return sorted({round_width(lo), round_width(hi)} | {w for w in (0.25, 0.5, 0.75, 1.0) if lo <= w <= hi})


def format_width(width: float) -> str:
    """Short text for a width: 0.35 -> '0.35', 1.0 -> '1.0'."""
    text = f"{round_width(width):.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def validate_width(width: float, lo: float = DEFAULT_WIDTH_RANGE[0], hi: float = DEFAULT_WIDTH_RANGE[1]) -> float:
    """Return ``width`` as a canonical float or raise :class:`WidthError` naming the valid range."""
    try:
        w = float(width)
    except (TypeError, ValueError):
        raise WidthError(f"width {width!r} is not a number; valid: a number in [{lo}, {hi}]") from None
    if not math.isfinite(w) or w < lo - 1e-9 or w > hi + 1e-9:
        raise WidthError(f"width {width!r} is outside the model's range; valid: [{lo}, {hi}]")
    return round_width(w)


_RANGE = re.compile(r"^\s*([^:]+):([^:]+):([^:]+)\s*$")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WidthError(
            f"{what} {text.strip()!r} is not a number; valid: a list '0.25,0.5,1.0' or a range 'start:stop:step'"
        ) from None
    if not math.isfinite(value):
        raise WidthError(f"{what} {text.strip()!r} is not finite; valid: numbers in (0, 1]")
    return value


def parse_widths(
    text: str | float | list | tuple,
    lo: float = DEFAULT_WIDTH_RANGE[0],
    hi: float = DEFAULT_WIDTH_RANGE[1],
) -> list[float]:
    """Parse a width list (``"0.25,0.5,1.0"``) or an inclusive range (``"0.25:1.0:0.05"``).

    Every width is validated against ``[lo, hi]``. The result keeps the given order for lists
    (duplicates removed) and is ascending for ranges.

    Raises:
        WidthError: empty input, non-numbers, NaN, an empty or backwards range, a non-positive
            step, more than :data:`MAX_WIDTHS` widths, or a width outside ``[lo, hi]``.

    Examples:
        >>> parse_widths("0.25:1.0:0.25")
        [0.25, 0.5, 0.75, 1.0]
    """
    if isinstance(text, (int, float)):
        return [validate_width(text, lo, hi)]
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
        text = ",".join(items)
    text = str(text).strip()
    if not text:
        raise WidthError("no widths given; valid: a list '0.25,0.5,1.0' or a range 'start:stop:step'")
    match = _RANGE.match(text)
    if match:
        start, stop, step = (_number(g, "range bound") for g in match.groups())
        if step <= 0:
            raise WidthError(f"range step must be > 0, got {step:g}; valid: 'start:stop:step' with step > 0")
        if stop < start:
            raise WidthError(f"range {text!r} is empty (stop < start); valid: 'start:stop:step' with start <= stop")
        count = (stop - start) / step + 1e-6
        n = int(math.floor(count)) + 1 if math.isfinite(count) and count < 10 * MAX_WIDTHS else -1
        if n < 0 or n > MAX_WIDTHS:
            raise WidthError(f"range {text!r} names {'%.3g' % (count + 1)} widths; valid: at most {MAX_WIDTHS} (use a larger step, "
                             "e.g. 0.25:1.0:0.05)")
        raw = [start + i * step for i in range(n)]
    elif ":" in text:
        raise WidthError(f"width range {text!r} is malformed; valid: 'start:stop:step', e.g. '0.25:1.0:0.05'")
    else:
        parts = [p for p in (s.strip() for s in text.split(",")) if p]
        if not parts:
            raise WidthError("no widths given; valid: a list '0.25,0.5,1.0' or a range 'start:stop:step'")
        if len(parts) > MAX_WIDTHS:
            raise WidthError(f"{len(parts)} widths given; valid: at most {MAX_WIDTHS}")
        raw = [_number(p, "width") for p in parts]
    out: list[float] = []
    seen: set[float] = set()
    for value in raw:
        w = validate_width(value, lo, hi)
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


# ----------------------------------------------------------------------------- a switchable file's widths


def held_widths(table: list[dict]) -> list[float]:
    """Every width a switchable file (``us3l export --switchable``) serves: its index table's rows
    (``{"index", "width", "aliases", ...}``) and their aliases, sorted."""
    return sorted({float(w) for row in table for w in [row["width"], *row.get("aliases", [])]})


def index_for(table: list[dict], width: float, name: str = "the file") -> int:
    """The ``width_index`` of ``width`` (the width of a row of a switchable file's index table, or
    one of its aliases).

    Raises:
        ConfigError: a width the file does not hold (one line listing the ones it holds).
    """
    from .errors import ConfigError

    for row in table:
        if any(abs(float(w) - float(width)) < 1e-9 for w in [row["width"], *row.get("aliases", [])]):
            return int(row["index"])
    held = ", ".join(format_width(w) for w in held_widths(table))
    raise ConfigError(f"{name} holds no width {format_width(width)}; it holds {held}")
