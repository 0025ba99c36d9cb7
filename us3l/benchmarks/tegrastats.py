"""tegrastats parsing and energy per inference (Jetson).

Rails differ per module (Orin Nano: ``VDD_IN``, ``VDD_CPU_GPU_CV``, ``VDD_SOC``; AGX Orin:
``VDD_GPU_SOC``, ``VDD_CPU_CV``, ``VIN_SYS_5V0``; older modules ``POM_5V_IN 3306/3306`` without
units), so lines are parsed generically: every ``NAME current/average`` pair with ``mW`` (or no
unit) is a rail; ``MB``/``kB`` pairs (RAM, SWAP) are not. The board's total input rail is used
for energy when present, else the sum of all rails.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*)\s+(\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TEMP = re.compile(r"\b([A-Za-z0-9_]+)@(-?\d+(?:\.\d+)?)C\b")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "LFB"}
TOTAL_RAILS = ("VDD_IN", "VIN_SYS_5V0", "POM_5V_IN", "VIN")


@dataclass(frozen=True)
class TegraSample:
    """One tegrastats line: rails ``{name: (current mW, average mW)}`` and temperatures in °C."""

    rails: dict[str, tuple[int, int]] = field(default_factory=dict)
    temps: dict[str, float] = field(default_factory=dict)


def parse_line(line: str) -> TegraSample | None:
    """Parse one tegrastats line; ``None`` when it carries no power rail."""
    rails = {m.group(1): (int(m.group(2)), int(m.group(3))) for m in _RAIL.finditer(line)
             if m.group(1) not in _NOT_RAILS}
    if not rails:
        return None
    temps = {m.group(1): float(m.group(2)) for m in _TEMP.finditer(line)}
    return TegraSample(rails=rails, temps=temps)


def parse_log(text: str) -> list[TegraSample]:
    """All samples of a tegrastats log (lines without rails skipped)."""
    return [s for s in (parse_line(line) for line in text.splitlines()) if s is not None]


def total_rail(samples: Sequence[TegraSample]) -> str | None:
    """The board-input rail present in ``samples`` (``VDD_IN`` ...), or ``None`` (then rails are summed)."""
    names = set().union(*(s.rails for s in samples)) if samples else set()
    return next((r for r in TOTAL_RAILS if r in names), None)


def mean_power_mw(samples: Sequence[TegraSample], rail: str | None = None) -> float | None:
    """Mean instantaneous power over ``samples`` on ``rail`` (default: total rail, else sum of rails)."""
    if not samples:
        return None
    rail = rail or total_rail(samples)
    if rail:
        values = [s.rails[rail][0] for s in samples if rail in s.rails]
    else:
        values = [sum(c for c, _ in s.rails.values()) for s in samples]
    return sum(values) / len(values) if values else None


def energy_per_inference_mj(power_mw: float, latency_ms: float, batch: int = 1) -> float:
    """Energy of one sample in millijoules: ``power [mW] * latency [ms] / 1000 / batch``.

    Examples:
        >>> energy_per_inference_mj(5000.0, 10.0)
        50.0
    """
    return power_mw * latency_ms / 1000.0 / max(1, batch)


def sampler_shell(tegrastats: str, log_path: str, interval_ms: int = 100) -> tuple[str, str]:
    """Shell snippets (start, stop) running tegrastats in the background into ``log_path``.

    Every path is ``shlex.quote``d; the PID is kept in a shell variable.
    """
    start = (f"{shlex.quote(tegrastats)} --interval {int(interval_ms)} > {shlex.quote(log_path)} 2>&1 & "
             "US3L_TS=$!")
    stop = 'kill "$US3L_TS" 2>/dev/null; wait "$US3L_TS" 2>/dev/null'
    return start, stop
