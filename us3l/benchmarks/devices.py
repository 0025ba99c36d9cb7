"""Benchmark devices: built-ins (``cpu``, ``cuda``, ``jetson``) and named TOML profiles.

Profiles live in the user config dir (``$XDG_CONFIG_HOME/us3l/devices.toml``, default
``~/.config/us3l/devices.toml``), or in a file named with ``--devices-file``. A
``us3l-devices.toml`` in the working directory is read only when named: a profile decides which
commands run, so a file that arrived with a cloned project must not be trusted silently::

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

A typo raises :class:`ConfigError` naming the file, the line and the valid keys. Values are
checked too: ports in 1..65535, runner names from the registry, ssh settings only with a
``host``, ssh options from :data:`SAFE_SSH_OPTIONS` only (options such as ``ProxyCommand`` or
``LocalCommand`` run local commands), and host-key checking never switched off
(``known_hosts = "/dev/null"`` with accepting new keys, ``StrictHostKeyChecking=no``). A profile
named like a built-in device (``[devices.cpu]``) is an error, not silently ignored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError, unknown_name
from us3l.core.precision import PRECISIONS

from .device_profile import (DEFAULT_TRTEXEC, SAFE_SSH_OPTIONS, DeviceProfile, check_host_key_policy,  # noqa: F401
                             check_ssh_option)

PROJECT_FILE = "us3l-devices.toml"


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
#: Keys that only mean something for an ssh device (a profile with them but no ``host`` would run locally).
SSH_KEYS = ("user", "port", "identity_file", "ssh_options", "known_hosts", "accept_new_host_key", "workdir")


def user_config_file() -> Path:
    """``$XDG_CONFIG_HOME/us3l/devices.toml`` (default ``~/.config/us3l/devices.toml``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "us3l" / "devices.toml"


def default_devices_file(cwd: Path | None = None) -> Path | None:
    """The user file if present, else ``None``. A ``us3l-devices.toml`` in ``cwd`` is never read
    unless named with ``--devices-file`` (see the module docstring)."""
    path = user_config_file()
    return path if path.is_file() else None


def _validate_profile(path: Path, text: str, name: str, entries: dict) -> None:
    """Ranges, registry names and the ssh rules of one ``[devices.NAME]`` table (types already checked)."""
    table = f"devices.{name}"

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{path}:{_line_of(text, table, key)}: {message}")

    port = entries.get("port")
    if port is not None and not 1 <= port <= 65535:
        fail("port", f"port {port} in [devices.{name}] is invalid; valid: 1..65535")
    for key in ("connect_timeout", "command_timeout", "threads"):
        if key in entries and entries[key] < 1:
            fail(key, f"{key} {entries[key]} in [devices.{name}] is invalid; valid: an integer >= 1")
    for key in ("power_mode", "power_modes"):
        values = entries.get(key)
        values = [values] if isinstance(values, int) else (values or [])
        if any(v < 0 for v in values):
            fail(key, f"{key} {entries[key]!r} in [devices.{name}] is invalid; valid: nvpmodel ids >= 0")
    if "precision" in entries and entries["precision"] not in PRECISIONS:
        fail("precision", f"precision {entries['precision']!r} in [devices.{name}] is invalid; valid: {', '.join(PRECISIONS)}")
    local = entries.get("local_device")
    if local is not None and not (local in ("cpu", "cuda") or re.fullmatch(r"cuda:\d+", local)):
        fail("local_device", f"local_device {local!r} in [devices.{name}] is invalid; valid: cpu, cuda, cuda:N")
    if "runner" in entries:
        from .runners.registry import list_runners

        valid = [r for r in list_runners() if r != "onnxruntime-agent"]
        if entries["runner"] not in valid:
            fail("runner", f"runner {entries['runner']!r} in [devices.{name}] is unknown; valid: {', '.join(valid)}")
    for key in ("host", "user"):
        value = entries.get(key)
        if value is not None and (not value or value.startswith("-") or re.search(r"[\s@]" if key == "user" else r"\s", value)):
            fail(key, f"{key} {value!r} in [devices.{name}] is invalid; valid: a name without spaces, not starting with '-'")
    if "host" not in entries:
        given = [k for k in SSH_KEYS if k in entries]
        if given:
            fail(given[0], f"[devices.{name}] sets {', '.join(given)} but no host, so it would silently run on this "
                           "machine; add host = \"...\" or remove the ssh settings")
    for option in entries.get("ssh_options", ()):
        try:
            check_ssh_option(option, name)
        except ConfigError as exc:
            fail("ssh_options", str(exc))


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


def read_toml_file(path: Path, what: str) -> tuple[str, dict[str, Any]]:
    """``(text, parsed)`` of the TOML file ``path`` (a ``what``: "devices file", "fleet file"), whose
    text the callers keep to name the line of a bad key (:func:`_line_of`).

    Raises:
        ConfigError: one line for an unreadable file, one that is not UTF-8 text, or invalid TOML.
    """
    import tomllib

    try:
        text = Path(path).read_text(encoding="utf-8")
        return text, tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; valid: a TOML {what}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_profiles(path: Path) -> dict[str, DeviceProfile]:
    """Parse a devices TOML file.

    Raises:
        ConfigError: unreadable/invalid TOML, unknown keys (file, line, valid keys) or wrong types.
    """
    text, data = read_toml_file(path, "devices file")
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
        _validate_profile(Path(path), text, name, entries)
        kwargs = dict(entries)
        for key in ("ssh_options", "power_modes"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        if "power_mode" in kwargs and "power_modes" not in kwargs:
            kwargs["power_modes"] = (kwargs["power_mode"],)
        if kwargs.get("runner") == "trtexec" and "trtexec" not in kwargs and kwargs.get("jetson", False):
            kwargs["trtexec"] = DEFAULT_TRTEXEC
        profiles[name] = DeviceProfile(name=name, source=str(path), **kwargs)
        try:
            check_host_key_policy(profiles[name])
        except ConfigError as exc:
            raise ConfigError(f"{path}:{_line_of(text, table, 'known_hosts')}: {exc}") from None
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
    path = devices_file or default_devices_file()
    profiles = load_profiles(path) if path else {}  # a profile named like a built-in fails here
    if name in BUILTIN_DEVICES:
        return BUILTIN_DEVICES[name]
    if name not in profiles:
        err = unknown_name("device", name, sorted(set(BUILTIN_DEVICES) | set(profiles)))
        where = f" (profiles from {path})" if path else f" (no {user_config_file()})"
        if devices_file is None and (Path.cwd() / PROJECT_FILE).is_file():
            where += f"; ./{PROJECT_FILE} is read only when named: pass --devices-file {PROJECT_FILE}"
        raise type(err)(str(err) + where)
    return profiles[name]


__all__ = ["DeviceProfile", "BUILTIN_DEVICES", "VALID_KEYS", "SAFE_SSH_OPTIONS", "check_ssh_option", "check_host_key_policy", "get_device", "list_devices", "load_profiles",
           "default_devices_file", "user_config_file"]
