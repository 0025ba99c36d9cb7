"""Benchmark devices: built-ins (``cpu``, ``cuda``, ``jetson``) and named TOML profiles.

Profiles live in ``us3l-devices.toml`` in the working directory, else in the user config dir
(``$XDG_CONFIG_HOME/us3l/devices.toml``, default ``~/.config/us3l/devices.toml``)::

    [devices.orin]
    host = "orin.local"            # ssh destination (a ~/.ssh/config alias works too)
    user = "ubuntu"
    port = 22
    identity_file = "~/.ssh/id_ed25519"
    workdir = "/tmp"               # remote temp dirs are created under it with mktemp -d
    runner = "trtexec"             # or "onnxruntime" (ships the self-contained agent)
    precision = "fp16"
    power_modes = [0, 2]           # nvpmodel modes to measure (Jetson)
    trtexec = "/usr/src/tensorrt/bin/trtexec"
    ssh_options = ["ProxyJump=bastion"]

A typo raises :class:`ConfigError` naming the file, the line and the valid keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from us3l.core.errors import ConfigError, unknown_name

PROJECT_FILE = "us3l-devices.toml"
DEFAULT_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"


@dataclass(frozen=True)
class DeviceProfile:
    """Where and how to benchmark.

    Attributes:
        name: profile name; host: ssh destination (``None`` = this machine).
        user / port / identity_file / ssh_options / known_hosts: ssh settings (``None`` = ssh defaults,
            i.e. ``~/.ssh/config``); connect_timeout / command_timeout: seconds.
        accept_new_host_key: allow first contact (``StrictHostKeyChecking=accept-new``).
        workdir: remote parent of the temp dir; runner / precision / threads: defaults for this device.
        local_device: ``cpu`` or ``cuda`` for in-process runners.
        jetson: record nvpmodel/jetson_clocks, sample tegrastats; power_mode(s): nvpmodel modes.
        trtexec / python / tegrastats: tool paths on the device.
        trt_version: TensorRT version (``"10.3.0"``) when it cannot be probed.
        source: the TOML file the profile came from (``None`` for built-ins).
    """

    name: str
    host: str | None = None
    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    ssh_options: tuple[str, ...] = ()
    known_hosts: str | None = None
    accept_new_host_key: bool = False
    connect_timeout: int = 10
    command_timeout: int = 900
    workdir: str | None = None
    runner: str = "onnxruntime"
    precision: str = "fp32"
    threads: int | None = None
    local_device: str = "cpu"
    jetson: bool = False
    power_mode: int | None = None
    power_modes: tuple[int, ...] = ()
    trtexec: str = "trtexec"
    python: str = "python3"
    tegrastats: str = "tegrastats"
    trt_version: str | None = None
    source: str | None = None

    @property
    def is_remote(self) -> bool:
        """True when commands run over ssh."""
        return self.host is not None


BUILTIN_DEVICES = {
    "cpu": DeviceProfile(name="cpu", runner="onnxruntime", local_device="cpu"),
    "cuda": DeviceProfile(name="cuda", runner="onnxruntime", local_device="cuda"),
    "jetson": DeviceProfile(name="jetson", runner="trtexec", local_device="cuda", jetson=True,
                            trtexec=DEFAULT_TRTEXEC, precision="fp16"),
}

_TYPES: dict[str, tuple[type, ...]] = {
    "host": (str,), "user": (str,), "port": (int,), "identity_file": (str,), "ssh_options": (list,),
    "known_hosts": (str,), "accept_new_host_key": (bool,), "connect_timeout": (int,), "command_timeout": (int,),
    "workdir": (str,), "runner": (str,), "precision": (str,), "threads": (int,), "local_device": (str,),
    "jetson": (bool,), "power_mode": (int,), "power_modes": (list,), "trtexec": (str,), "python": (str,),
    "tegrastats": (str,), "trt_version": (str,),
}
VALID_KEYS = tuple(_TYPES)


def user_config_file() -> Path:
    """``$XDG_CONFIG_HOME/us3l/devices.toml`` (default ``~/.config/us3l/devices.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "us3l" / "devices.toml"


def default_devices_file(cwd: Path | None = None) -> Path | None:
    """The project file in ``cwd`` if present, else the user file if present, else ``None``."""
    for path in ((cwd or Path.cwd()) / PROJECT_FILE, user_config_file()):
        if path.is_file():
            return path
    return None


def _line_of(text: str, table: str, key: str | None) -> int:
    """1-based line of ``key`` inside ``[table]`` (or of the table header when ``key`` is None)."""
    current = None
    header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    for no, line in enumerate(text.splitlines(), 1):
        m = header.match(line)
        if m:
            current = re.sub(r"\s*\.\s*", ".", m.group(1)).replace('"', "").replace("'", "")
            if key is None and current == table:
                return no
            continue
        if key is not None and current == table and re.match(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", line):
            return no
    return 0


def _top_level_line(text: str, name: str) -> int:
    """1-based line where the top-level table or key ``name`` first appears."""
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*\[+\s*[\"']?{re.escape(name)}[\"']?\s*[.\]]", line) or \
                re.match(rf"^\s*[\"']?{re.escape(name)}[\"']?\s*[.=]", line):
            return no
    return 0


def load_profiles(path: Path) -> dict[str, DeviceProfile]:
    """Parse a devices TOML file.

    Raises:
        ConfigError: unreadable/invalid TOML, unknown keys (file, line, valid keys) or wrong types.
    """
    import tomllib

    try:
        text = Path(path).read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read devices file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    extra_top = sorted(set(data) - {"devices"})
    if extra_top:
        line = _top_level_line(text, extra_top[0])
        raise ConfigError(f"{path}:{line}: unknown table or key {extra_top[0]!r}; valid: [devices.<name>] tables")
    profiles = {}
    for name, entries in (data.get("devices") or {}).items():
        table = f"devices.{name}"
        if not isinstance(entries, dict):
            raise ConfigError(f"{path}:{_line_of(text, 'devices', name)}: 'devices.{name}' must be a table")
        for key, value in entries.items():
            line = _line_of(text, table, key)
            if key not in _TYPES:
                raise ConfigError(f"{path}:{line}: unknown key {key!r} in [devices.{name}]; "
                                  f"valid: {', '.join(VALID_KEYS)}")
            ok = isinstance(value, _TYPES[key]) and not (isinstance(value, bool) and bool not in _TYPES[key])
            if ok and key == "power_modes":
                ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            if ok and key == "ssh_options":
                ok = all(isinstance(v, str) for v in value)
            if not ok:
                want = {"power_modes": "a list of integers", "ssh_options": "a list of strings"}.get(
                    key, _TYPES[key][0].__name__)
                raise ConfigError(f"{path}:{line}: key {key!r} in [devices.{name}] must be {want}, got {value!r}")
        if name in BUILTIN_DEVICES:
            raise ConfigError(f"{path}:{_line_of(text, table, None)}: profile name {name!r} is a built-in device; "
                              f"choose another name")
        kwargs = dict(entries)
        for key in ("ssh_options", "power_modes"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "power_mode" in kwargs and "power_modes" not in kwargs:
            kwargs["power_modes"] = (kwargs["power_mode"],)
        if kwargs.get("runner") == "trtexec" and "trtexec" not in kwargs and kwargs.get("jetson", False):
            kwargs["trtexec"] = DEFAULT_TRTEXEC
        profiles[name] = DeviceProfile(name=name, source=str(path), **kwargs)
    return profiles


def list_devices(devices_file: Path | None = None) -> list[str]:
    """Built-in device names plus the profiles of ``devices_file`` (default lookup when ``None``)."""
    path = devices_file or default_devices_file()
    names = set(BUILTIN_DEVICES) | (set(load_profiles(path)) if path else set())
    return sorted(names)


def get_device(name: str, devices_file: Path | None = None) -> DeviceProfile:
    """Resolve ``name`` to a built-in device or a profile.

    Raises:
        UnknownNameError: unknown device (the message lists built-ins and profiles).
        ConfigError: the devices file is invalid.
    """
    if name in BUILTIN_DEVICES:
        return BUILTIN_DEVICES[name]
    path = devices_file or default_devices_file()
    profiles = load_profiles(path) if path else {}
    if name not in profiles:
        err = unknown_name("device", name, sorted(set(BUILTIN_DEVICES) | set(profiles)))
        where = f" (profiles from {path})" if path else f" (no {PROJECT_FILE} here and no {user_config_file()})"
        raise type(err)(str(err) + where)
    return profiles[name]


__all__ = ["DeviceProfile", "BUILTIN_DEVICES", "VALID_KEYS", "get_device", "list_devices", "load_profiles",
           "default_devices_file", "user_config_file"]
