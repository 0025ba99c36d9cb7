"""Jetson device state: ``nvpmodel`` power modes and ``jetson_clocks`` (through an Executor).

Mode numbers differ per module and JetPack (docs/deployment.md §4), so the mode is always recorded
from ``nvpmodel -q`` rather than assumed. Changing it needs passwordless sudo for ``nvpmodel``
(``sudo -n``): without it the error says so instead of hanging on a password prompt.
"""

from __future__ import annotations

import re
import shlex

from us3l.core.errors import RemoteError

from .executor import Executor

_MODE_NAME = re.compile(r"NV Power Mode:\s*(\S+)")


def parse_nvpmodel(text: str) -> dict:
    """``nvpmodel -q`` output -> ``{"name": "MAXN", "id": 0}`` (missing parts ``None``).

    Examples:
        >>> parse_nvpmodel("NV Fan Mode:quiet\\nNV Power Mode: MAXN\\n0\\n")
        {'name': 'MAXN', 'id': 0}
    """
    name = _MODE_NAME.search(text)
    mode_id = None
    if name:
        rest = text[name.end():].split()
        mode_id = int(rest[0]) if rest and rest[0].isdigit() else None
    return {"name": name.group(1) if name else None, "id": mode_id}


def jetson_state(ex: Executor) -> dict:
    """Record ``nvpmodel -q``, ``jetson_clocks --show`` and the module model (each may be unavailable)."""
    state: dict = {}
    res = ex.run_shell("nvpmodel -q 2>&1 || sudo -n nvpmodel -q 2>&1", check=False, timeout=60)
    state["nvpmodel"] = parse_nvpmodel(res.stdout) if res.returncode == 0 else None
    state["nvpmodel_raw"] = res.stdout.strip()[-400:]
    res = ex.run_shell("jetson_clocks --show 2>&1 || sudo -n jetson_clocks --show 2>&1", check=False, timeout=60)
    state["jetson_clocks"] = res.stdout.strip()[-2000:] if res.returncode == 0 else None
    res = ex.run_shell("tr -d '\\0' < /proc/device-tree/model", check=False, timeout=30)
    state["jetson_model"] = res.stdout.strip() or None
    return state


def set_power_mode(ex: Executor, mode: int) -> dict:
    """``sudo -n nvpmodel -m MODE`` and return the state read back.

    Raises:
        RemoteError: sudo needs a password, or nvpmodel rejected the mode.
    """
    res = ex.run_shell(f"sudo -n nvpmodel -m {shlex.quote(str(int(mode)))} 2>&1", check=False, timeout=120)
    out = res.stdout.strip()
    if res.returncode != 0:
        if "password" in out.lower():
            raise RemoteError(f"{ex.describe()}: setting power mode {mode} needs passwordless sudo for nvpmodel "
                              f"(sudo: a password is required); add a sudoers rule for /usr/sbin/nvpmodel")
        last = out.splitlines()[-1] if out else f"exit {res.returncode}"
        raise RemoteError(f"{ex.describe()}: nvpmodel -m {mode} failed: {last}")
    return jetson_state(ex)
