"""Where benchmark commands run: this machine, or a device over the system OpenSSH client.

:class:`SshExecutor` calls ``ssh``/``scp`` with argument lists (never a local shell), so the
user's ``~/.ssh/config``, keys, agents and ``ProxyJump`` apply. Host keys are checked
(``StrictHostKeyChecking=yes``; ``accept-new`` only on explicit opt-in), ``BatchMode=yes`` never
prompts, every remote argument is ``shlex.quote``d, and the remote temp dir (``mktemp -d``) is
removed on exit. Failures become one-line :class:`RemoteError` messages.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

from us3l.core.errors import ConfigError, RemoteError

from ..device_profile import DeviceProfile, check_host_key_policy, check_ssh_option

log = logging.getLogger(__name__)
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")


class Executor(ABC):
    """Runs commands and moves files for a runner; a context manager owning one temp dir."""

    def __init__(self, command_timeout: float = 900.0, workdir: str | None = None) -> None:
        self.command_timeout = command_timeout
        self.workdir = workdir  # parent of the temp dir (None: the target's default temp dir)
        self.tmpdir: str | None = None
        self.uploaded: dict[str, str] = {}  # local key (sha256 / name) -> path on the target

    def __enter__(self) -> Executor:
        self.open()
        try:
            self.tmpdir = self.make_tempdir(self.workdir)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.tmpdir:
                self.remove_tree(self.tmpdir)
        except RemoteError as err:  # cleanup failure must not hide the original error
            log.warning("could not remove %s: %s", self.tmpdir, err)
        finally:
            self.tmpdir = None
            self.uploaded.clear()
            self.close()

    def open(self) -> None:
        """Prepare the transport (no-op locally)."""

    def close(self) -> None:
        """Release the transport (no-op locally)."""

    def path(self, name: str) -> str:
        """``name`` inside the temp dir."""
        if not self.tmpdir:
            raise RemoteError("executor is not open; use it as a context manager")
        return f"{self.tmpdir}/{name}"

    def run(self, argv: list[str], timeout: float | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``argv`` (each element quoted for the remote shell)."""
        return self.run_shell(shlex.join(argv), timeout=timeout, check=check)

    @abstractmethod
    def run_shell(self, script: str, timeout: float | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
        """Run a shell snippet built by us from quoted pieces; text output captured."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to ``remote``."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy ``remote`` to a local file."""

    @abstractmethod
    def describe(self) -> str:
        """Short text naming the target (for logs and reports)."""

    def make_tempdir(self, parent: str | None = None) -> str:
        """Create a private temp dir with ``mktemp -d`` and return its path."""
        argv = ["mktemp", "-d", "-p", parent, "us3l.XXXXXXXX"] if parent else ["mktemp", "-d", "-t", "us3l.XXXXXXXX"]
        path = self.run(argv).stdout.strip()
        if not _SAFE_PATH.match(path):
            self.run(["rm", "-rf", "--", path], check=False)
            raise RemoteError(f"{self.describe()}: temp dir {path!r} has unsafe characters; set a plain workdir")
        return path

    def remove_tree(self, path: str) -> None:
        """``rm -rf -- path``."""
        self.run(["rm", "-rf", "--", path], timeout=60)

    def upload_once(self, local: Path, key: str, name: str) -> str:
        """Copy ``local`` into the temp dir as ``name`` unless ``key`` was uploaded already."""
        if key not in self.uploaded:
            target = self.path(name)
            self.put(local, target)
            self.uploaded[key] = target
        return self.uploaded[key]

    def read_text(self, remote: str) -> str:
        """Contents of a text file on the target."""
        return self.run(["cat", "--", remote]).stdout

    def which(self, program: str) -> str | None:
        """Resolved path of ``program`` on the target, or ``None``."""
        res = self.run_shell(f"command -v {shlex.quote(program)}", check=False, timeout=30)
        out = res.stdout.strip()
        return out or None


class LocalExecutor(Executor):
    """Commands on this machine (``/bin/sh -c`` for our own quoted snippets)."""

    def run_shell(self, script: str, timeout: float | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
        try:
            res = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True,
                                 timeout=timeout or self.command_timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"local command timed out after {timeout or self.command_timeout:g}s: "
                              f"{script[:80]}") from None
        if check and res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
            raise RemoteError(f"local command failed (exit {res.returncode}): {tail[0]}")
        return res

    def put(self, local: Path, remote: str) -> None:
        shutil.copyfile(local, remote)

    def get(self, remote: str, local: Path) -> None:
        shutil.copyfile(remote, local)

    def describe(self) -> str:
        return "localhost"


def ssh_options(profile: DeviceProfile, accept_new: bool = False) -> list[str]:
    """Options shared by ``ssh`` and ``scp`` (everything but the port flag).

    Raises:
        ConfigError: an ssh option that is not ``Key=Value``.
    """
    check_host_key_policy(profile, accept_new)
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(profile.connect_timeout)}",
            "-o", f"StrictHostKeyChecking={'accept-new' if accept_new or profile.accept_new_host_key else 'yes'}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
    if profile.known_hosts:
        opts += ["-o", f"UserKnownHostsFile={Path(profile.known_hosts).expanduser()}"]
    if profile.identity_file:
        opts += ["-i", str(Path(profile.identity_file).expanduser()), "-o", "IdentitiesOnly=yes"]
    if profile.user:
        opts += ["-o", f"User={profile.user}"]
    for opt in profile.ssh_options:
        opts += ["-o", check_ssh_option(opt, profile.name)]
    return opts


def classify_ssh_failure(dest: str, stderr: str, rc: int) -> str:
    """One-line explanation of an ssh/scp failure from its stderr."""
    text = stderr or ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("@")]
    last = lines[-1] if lines else f"exit {rc}"
    if "IDENTIFICATION HAS CHANGED" in text or "Host key verification failed" in text:
        if "IDENTIFICATION HAS CHANGED" in text or "key for" in text and "has changed" in text:
            return (f"{dest}: host key mismatch: the device's key differs from known_hosts "
                    f"(possible impostor or reinstalled device); fix known_hosts, never disable checking")
        return (f"{dest}: host key not trusted ({last}); for a first contact pass --accept-new-host-key "
                f"or add the key to known_hosts")
    if "Connection refused" in text:
        return f"{dest}: unreachable: connection refused ({last})"
    if "timed out" in text:
        return f"{dest}: unreachable: connection timed out ({last})"
    if "Could not resolve" in text or "Name or service not known" in text:
        return f"{dest}: unreachable: unknown host ({last})"
    if "Permission denied" in text:
        return f"{dest}: authentication failed ({last}); check user and identity_file"
    return f"{dest}: ssh failed (exit {rc}): {last}"


class SshExecutor(Executor):
    """Commands on a device over the system OpenSSH client (optionally one multiplexed connection)."""

    def __init__(self, profile: DeviceProfile, accept_new: bool = False, multiplex: bool = True) -> None:
        super().__init__(profile.command_timeout, profile.workdir)
        if not profile.host or profile.host.startswith("-") or re.search(r"\s", profile.host):
            raise ConfigError(f"device {profile.name!r} has an invalid host {profile.host!r}")
        self.profile = profile
        ssh_bin, scp_bin = shutil.which("ssh"), shutil.which("scp")
        if not ssh_bin or not scp_bin:
            from us3l.core.errors import BackendUnavailableError

            raise BackendUnavailableError("the OpenSSH client (ssh, scp) is not installed here")
        self._ssh_bin, self._scp_bin = ssh_bin, scp_bin
        self._opts = ssh_options(profile, accept_new)
        self._multiplex = multiplex
        self._ctl_dir: str | None = None

    @property
    def dest(self) -> str:
        """The ssh destination (host or ``~/.ssh/config`` alias)."""
        return self.profile.host or ""

    def describe(self) -> str:
        user = f"{self.profile.user}@" if self.profile.user else ""
        port = f":{self.profile.port}" if self.profile.port else ""
        return f"{user}{self.dest}{port}"

    def _ssh_argv(self, *extra: str) -> list[str]:
        argv = [self._ssh_bin, *self._opts]
        if self.profile.port:
            argv += ["-p", str(int(self.profile.port))]
        if self._ctl_dir:
            argv += ["-o", f"ControlPath={self._ctl_dir}/cm", "-o", "ControlMaster=no"]
        return [*argv, *extra]

    def _call(self, argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.describe()}: {what} timed out after {timeout:g}s") from None

    def open(self) -> None:
        if not self._multiplex:
            return
        self._ctl_dir = tempfile.mkdtemp(prefix="us3l-ssh-")
        argv = [self._ssh_bin, *self._opts, *(["-p", str(int(self.profile.port))] if self.profile.port else []),
                "-o", f"ControlPath={self._ctl_dir}/cm", "-o", "ControlMaster=yes", "-o", "ControlPersist=120",
                "-N", "-f", "--", self.dest]
        with tempfile.TemporaryFile("w+") as err:  # a file, not a pipe: the master keeps it open
            try:
                rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                    timeout=self.profile.connect_timeout + 15).returncode
            except subprocess.TimeoutExpired:
                self.close()
                raise RemoteError(f"{self.describe()}: connection timed out after "
                                  f"{self.profile.connect_timeout + 15}s") from None
            err.seek(0)
            stderr = err.read()
        if rc != 0:
            self.close()
            raise RemoteError(classify_ssh_failure(self.describe(), stderr, rc))

    def close(self) -> None:
        if self._ctl_dir:
            ctl, self._ctl_dir = self._ctl_dir, None
            if Path(ctl, "cm").exists():
                subprocess.run([self._ssh_bin, "-o", f"ControlPath={ctl}/cm", "-O", "exit", "--", self.dest],
                               capture_output=True, timeout=15, stdin=subprocess.DEVNULL)
            shutil.rmtree(ctl, ignore_errors=True)

    def run_shell(self, script: str, timeout: float | None = None,
                  check: bool = True) -> subprocess.CompletedProcess:
        timeout = timeout or self.command_timeout
        res = self._call(self._ssh_argv("--", self.dest, script), timeout, f"command {script[:60]!r}")
        if res.returncode == 255:
            raise RemoteError(classify_ssh_failure(self.describe(), res.stderr, 255))
        if check and res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or [""]
            raise RemoteError(f"{self.describe()}: remote command failed (exit {res.returncode}): {tail[0]}")
        return res

    def _copy(self, src: str, dst: str) -> None:
        argv = [self._scp_bin, "-q", *self._opts]
        if self.profile.port:
            argv += ["-P", str(int(self.profile.port))]
        if self._ctl_dir:
            argv += ["-o", f"ControlPath={self._ctl_dir}/cm", "-o", "ControlMaster=no"]
        res = self._call([*argv, "--", src, dst], self.command_timeout, "file transfer")
        if res.returncode != 0:
            raise RemoteError(classify_ssh_failure(self.describe(), res.stderr, res.returncode))

    def _remote(self, path: str) -> str:
        if not _SAFE_PATH.match(path):
            raise RemoteError(f"remote path {path!r} has unsafe characters")
        return f"{self.dest}:{path}"

    def put(self, local: Path, remote: str) -> None:
        self._copy(str(Path(local).resolve()), self._remote(remote))

    def get(self, remote: str, local: Path) -> None:
        self._copy(self._remote(remote), str(Path(local).resolve()))


def make_executor(profile: DeviceProfile, accept_new: bool = False) -> Executor:
    """:class:`SshExecutor` for remote profiles, else :class:`LocalExecutor`."""
    if profile.is_remote:
        return SshExecutor(profile, accept_new=accept_new)
    return LocalExecutor(profile.command_timeout, profile.workdir)
