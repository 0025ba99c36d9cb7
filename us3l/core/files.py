"""Atomic file writes shared by every room: readers see the old file or the new one, never a part.

Write to a sibling temp file, flush + fsync, then ``os.replace``; on any failure the temp file
is removed and the target is left as it was. The file gets the mode a plain ``open()`` would give
it (0666 less the umask: 0644 under umask 022), not the temp file's private 0600.

A process killed mid-write (kill -9, power loss) cannot remove its temp file, so temp names
carry the writer's host and process id (``.NAME.<pid>@<host>.<random>.tmp``) and every later write
of ``NAME`` removes the temp files of writers on this host that no longer run
(:func:`sweep_stale_temps`). Temp files of the older unnamed form (``.NAME.<random>.tmp``) are
removed once they are an hour old.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


_UMASK_LOCK = threading.Lock()
#: Age after which a temp file of the older form (no writer id in its name) counts as abandoned.
LEGACY_TEMP_AGE_S = 3600.0


def host_tag() -> str:
    """Eight hex digits naming this host in temp-file names (host names may hold dots and dashes)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def writer_tag() -> str:
    """``<pid>@<host tag>``: who owns a temp file or staging folder."""
    return f"{os.getpid()}@{host_tag()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a process we may not signal still runs)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_gone(tag: str) -> bool:
    """True when ``<pid>@<host tag>`` names a process of this host that no longer runs."""
    pid, _, host = tag.partition("@")
    return host == host_tag() and pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid))


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree; a path already gone is fine."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sweep_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove temp files that killed writers of ``path`` left beside it; returns what was removed."""
    path = Path(path)
    ours = re.compile(rf"^\.{re.escape(path.name)}\.(\d+@[0-9a-f]{{8}})\.[^./]+\.tmp$")
    legacy = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    removed: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        m = ours.match(entry.name)
        try:
            stale = bool(m and writer_gone(m.group(1))) or bool(
                legacy.match(entry.name) and now - entry.stat().st_mtime > LEGACY_TEMP_AGE_S)
        except OSError:
            continue
        if stale:
            remove_path(entry)
            removed.append(entry)
    return removed


def current_umask() -> int:
    """The process umask (read by setting and restoring it; the lock keeps threads from racing)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """Open a temp file beside ``path`` for binary writing; it replaces ``path`` on success.

    Raises:
        OSError: the directory cannot be created or written (the caller turns it into a user error).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())  # mkstemp creates 0600
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text variant of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (trailing newline) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def check_writable_dir(folder: str | os.PathLike, what: str = "--out") -> Path:
    """Check, before any work, that ``folder`` is (or can be created as) a writable directory.

    Returns the folder. Creates nothing: the nearest existing ancestor must be a writable folder.

    Raises:
        ConfigError: ``folder`` is a file, lies under a file, or its nearest existing ancestor is
            not writable (read-only file system, missing permission).
    """
    from .errors import ConfigError

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file; valid: a folder (created when missing)")
    anchor = folder
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise ConfigError(f"cannot write to {what} {folder}: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write to {what} {folder}: {anchor} is not writable (read-only or no permission); "
                          f"choose a writable {what}")
    return folder


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (artifacts, checkpoints, model directories)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def leading_bytes(head: bytes) -> str:
    """The first bytes of a file as a person reads them: quoted text when printable, else hex."""
    if not head:
        return "nothing"
    text = head.decode("ascii", errors="replace")
    if all(c.isprintable() or c in "\t\r\n" for c in text):
        return repr(text)
    return " ".join(f"{b:02x}" for b in head[:8])


def foreign_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a file ``torch.save`` wrote (``"12 bytes, starts with 'hello'"``), else None.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``) or, in its legacy format, a pickle
    (protocol 2 or later, first byte ``0x80``); anything else is refused before unpickling, so a
    text file is not reported as a code-carrying pickle.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return None  # the loader reports it
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return None
    if size == 0:
        return "0 bytes: the file is empty"
    return f"{size} bytes, starts with {leading_bytes(head)}"


def check_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise :class:`~us3l.core.errors.CheckpointError` (one line) when ``path`` is a file that
    ``torch.save`` cannot have written: cheap, before any heavy import (see :func:`foreign_file`)."""
    if not os.path.isfile(path):
        return
    reason = foreign_file(path)
    if reason:
        from .errors import CheckpointError

        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint ({reason})")


def relative_path(path: str | os.PathLike[str] | None, base: str | os.PathLike[str]) -> str | None:
    """``path`` as seen from the folder ``base`` (POSIX form, ``..`` where needed), so a record
    written into ``base`` carries no absolute path of this machine; ``None`` stays ``None``, and a
    path on another drive keeps only its file name."""
    if path is None:
        return None
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).name
