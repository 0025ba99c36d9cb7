"""Width sampling for one training iteration: the sandwich rule and dynamic schedule "A".

Pure functions of a seeded :class:`random.Random` (docs/method.md §8). Two reference bugs are fixed
(docs/method.md §15.1, §15.15): the sandwich list is "max, min, then N-2 uniform draws" for any N, and
the stage index of schedule A is clamped to 4 (safe for any number of epochs). Under DDP every
rank must use the same widths: every rank draws from a generator seeded identically (the
reference's rule, docs/method.md §15.12; the generator is private to the trainer, so augmentation
cannot consume it) with no per-iteration collective, and :func:`width_digest` chains the drawn
lists into a small digest that the trainer compares across ranks once per epoch.
"""

from __future__ import annotations

import hashlib
import random
import struct

SCHEDULES = ("A",)


def stage_lower_bound(epoch: int, epochs: int, lo: float, hi: float, schedule: str | None = "A") -> float:
    """Smallest width sampled in ``epoch`` under the dynamic sampling schedule.

    Schedule "A" (docs/method.md §8): stage ``s = min(epoch // max(epochs // 4, 1) + 1, 4)``; stage 1
    trains only the max width (lower bound ``hi``), stage ``s > 1`` uses
    ``lo + (4 - s) * (hi - lo) / 3``, i.e. 1.0 -> 0.75 -> 0.5 -> 0.25 for ``[0.25, 1.0]``.
    With ``epochs`` a multiple of 4 this equals the reference; otherwise the last stage absorbs
    the remainder (``epochs = 10``: stages 2/2/2/4 epochs), and ``epochs < 4`` gives one epoch
    per stage until the run ends.

    Args:
        epoch: 0-based epoch.
        epochs: total epochs (>= 1).
        lo / hi: the width range.
        schedule: "A", or None / "" for no schedule (always ``lo``).

    Returns:
        The lower bound ``lo_t`` for this epoch.

    Raises:
        ValueError: unknown schedule, ``epochs < 1``, ``epoch < 0`` or ``lo > hi``.
    """
    if lo > hi:
        raise ValueError(f"width range lo={lo} > hi={hi}")
    if not schedule:
        return float(lo)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown sampling schedule {schedule!r}; valid: {', '.join(SCHEDULES)} or none")
    if epochs < 1 or epoch < 0:
        raise ValueError(f"need epochs >= 1 and epoch >= 0, got epoch={epoch}, epochs={epochs}")
    stage = min(epoch // max(epochs // 4, 1) + 1, 4)
    if stage == 1:
        return float(hi)
    return float(lo + (4 - stage) * (hi - lo) / 3)


def sample_widths(rng: random.Random, n: int, lo: float, hi: float, sandwich: bool = True) -> list[float]:
    """Draw the widths of one iteration, widest first.

    Sandwich rule: ``[hi, lo]`` plus ``n - 2`` independent ``U(lo, hi)`` draws (max and min each
    exactly once, length ``n`` for every ``n >= 2``). Without sandwich: ``n`` uniform draws.
    If ``lo == hi`` only the max network is trained: ``[hi]``.

    Args:
        rng: the seeded generator (its state is part of the resume state).
        n: number of widths per iteration (>= 2 with sandwich, >= 1 without).
        lo / hi: the range for this epoch.
        sandwich: include the extremes (docs/method.md §8; every shipped config uses True).

    Returns:
        The widths in descending order.
    """
    if lo > hi:
        raise ValueError(f"width range lo={lo} > hi={hi}")
    if n < (2 if sandwich else 1):
        raise ValueError(f"need n >= {2 if sandwich else 1} widths per iteration, got {n}")
    if lo == hi:
        return [float(hi)]
    if sandwich:
        widths = [float(hi), float(lo)] + [rng.uniform(lo, hi) for _ in range(n - 2)]
    else:
        widths = [rng.uniform(lo, hi) for _ in range(n)]
    return sorted(widths, reverse=True)


def widths_for_iteration(rng: random.Random, epoch: int, epochs: int, n: int, lo: float, hi: float,
                         sandwich: bool = True, schedule: str | None = "A") -> list[float]:
    """Widths of one iteration in ``epoch``: :func:`stage_lower_bound` then :func:`sample_widths`.

    Examples:
        >>> widths_for_iteration(random.Random(0), epoch=0, epochs=400, n=3, lo=0.25, hi=1.0)
        [1.0]
        >>> widths_for_iteration(random.Random(0), 300, 400, 3, 0.25, 1.0)[:1]
        [1.0]
    """
    lo_t = stage_lower_bound(epoch, epochs, lo, hi, schedule)
    return sample_widths(rng, n, lo_t, hi, sandwich)


def width_digest(widths: list[float], previous: bytes = b"") -> bytes:
    """Chain ``widths`` into a running 8-byte digest (order- and value-sensitive).

    Examples:
        >>> width_digest([1.0, 0.5]) == width_digest([1.0, 0.5])
        True
        >>> width_digest([1.0, 0.5]) == width_digest([1.0, 0.5000001])
        False
    """
    packed = struct.pack(f"<{len(widths)}d", *widths)
    return hashlib.blake2b(previous + packed, digest_size=8).digest()
