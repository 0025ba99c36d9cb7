"""Width sampling for one training iteration: the sandwich rule and dynamic schedule "A".

Pure functions of a seeded :class:`random.Random` (docs/method.md §8). Two reference bugs are fixed
(docs/method.md §15.1, §15.15): the sandwich list is "max, min, then N-2 uniform draws" for any N, and
the stage index of schedule A is clamped to 4 (safe for any number of epochs). Under DDP every
rank must use the same widths; :func:`broadcast_widths` makes rank 0's list authoritative instead
of relying on identically seeded generators (docs/method.md §15.12).
"""

from __future__ import annotations

import random

import torch

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


def broadcast_widths(widths: list[float]) -> list[float]:
    """Make every rank use rank 0's width list (no-op without an initialised process group).

    Args:
        widths: this rank's list (only rank 0's matters).

    Returns:
        Rank 0's list, as Python floats, on every rank.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [float(w) for w in widths]
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    length = torch.tensor([len(widths)], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    values = torch.zeros(int(length.item()), dtype=torch.float64, device=device)
    if dist.get_rank() == 0:
        values.copy_(torch.tensor(widths, dtype=torch.float64))
    dist.broadcast(values, src=0)
    return [float(v) for v in values.cpu().tolist()]
