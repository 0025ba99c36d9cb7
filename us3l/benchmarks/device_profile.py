"""What one benchmark device is: :class:`DeviceProfile` (loaded and validated by :mod:`.devices`).

A leaf module, so the executors that reach a device (local, OpenSSH) read its profile and the ssh
safety rules without importing the profile loader, which validates runner names against the runner
registry (whose runners use the executors).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from us3l.core.errors import ConfigError

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


#: ``ssh -o`` options a profile may set (lower case). Everything that can run a local command
#: (ProxyCommand, LocalCommand, PermitLocalCommand, KnownHostsCommand, Match exec, ...), load
#: code (PKCS11Provider, SecurityKeyProvider) or forward local resources (ForwardAgent, X11) is left out.
SAFE_SSH_OPTIONS = frozenset({
    "addressfamily", "bindaddress", "bindinterface", "certificatefile", "checkhostip", "ciphers", "compression",
    "connectionattempts", "connecttimeout", "controlmaster", "controlpath", "controlpersist", "globalknownhostsfile",
    "hostkeyalgorithms", "hostkeyalias", "hostname", "identitiesonly", "identityfile", "ipqos", "kexalgorithms",
    "loglevel", "macs", "port", "preferredauthentications", "proxyjump", "pubkeyacceptedalgorithms",
    "pubkeyacceptedkeytypes", "rekeylimit", "serveralivecountmax", "serveraliveinterval", "stricthostkeychecking",
    "tcpkeepalive", "updatehostkeys", "user", "userknownhostsfile", "verifyhostkeydns",
})


def _is_null_file(path: str) -> bool:
    return os.path.realpath(os.path.expanduser(path)) == os.devnull


def check_ssh_option(option: str, device: str) -> str:
    """``option`` (``Key=Value``) when it is on the safe list, else :class:`ConfigError`."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9]*)\s*[= ]\s*(\S.*)$", option)
    if not m or "\n" in option:
        raise ConfigError(f"ssh option {option!r} of device {device!r} is invalid; valid: 'Key=Value'")
    key, value = m.group(1).lower(), m.group(2).strip()
    if key not in SAFE_SSH_OPTIONS:
        raise ConfigError(f"ssh option {m.group(1)!r} of device {device!r} is not allowed (it could run local commands "
                          f"or weaken security); valid: {', '.join(sorted(SAFE_SSH_OPTIONS))}")
    if value.startswith("-"):
        raise ConfigError(f"ssh option {option!r} of device {device!r} has a value starting with '-'; refused")
    if key == "stricthostkeychecking" and value.lower() not in ("yes", "accept-new", "ask"):
        raise ConfigError(f"ssh option {option!r} of device {device!r} turns host-key checking off; "
                          "valid: yes or accept-new (add the device's key to known_hosts instead)")
    if key in ("userknownhostsfile", "globalknownhostsfile") and any(_is_null_file(v) for v in value.split()):
        raise ConfigError(f"ssh option {option!r} of device {device!r} discards host keys, which turns host-key "
                          "checking off; name a real known_hosts file")
    return option


def check_host_key_policy(profile: DeviceProfile, accept_new: bool = False) -> None:
    """Refuse settings that together switch host-key checking off.

    Raises:
        ConfigError: ``known_hosts`` is ``/dev/null`` (every key is forgotten) while new keys are accepted.
    """
    if profile.known_hosts and _is_null_file(profile.known_hosts) and (accept_new or profile.accept_new_host_key):
        raise ConfigError(f"device {profile.name!r}: known_hosts {profile.known_hosts!r} with accepting new host keys "
                          "accepts any key on every connection (host checking off); name a real known_hosts file")
