"""The user-error family.

Every mistake a user can make (a bad width, an unknown architecture, an unreadable checkpoint,
missing data, an unavailable backend) raises a subclass of :class:`US3LError`. The CLI renders
these as one line on stderr with exit code 2; anything else is a bug and keeps its traceback.
Messages say what was wrong and what is valid.
"""

from __future__ import annotations


class US3LError(Exception):
    """Base class of all user-facing errors (rendered as one line, exit code 2)."""


class WidthError(US3LError, ValueError):
    """A width (or width list/range) is malformed or outside the model's range."""


class UnknownNameError(US3LError, KeyError):
    """A registry lookup failed (architecture, exporter, runner, device, dataset...)."""

    def __str__(self) -> str:  # KeyError quotes its message; we want the plain line
        return str(self.args[0]) if self.args else ""


class CheckpointError(US3LError):
    """A checkpoint is missing, truncated, corrupt, foreign or does not match the model."""


class DataError(US3LError):
    """A dataset is missing or malformed."""


class ConfigError(US3LError, ValueError):
    """A configuration value or file is invalid."""


class BackendUnavailableError(US3LError):
    """An optional backend (TensorRT, CUDA, trtexec, ...) is not available here."""


class ExportError(US3LError):
    """An export step failed for a reason the user can act on."""


class ParityError(ExportError):
    """An exported artifact does not reproduce the PyTorch model within tolerance."""


class RemoteError(US3LError):
    """A remote device could not be reached or a remote command failed."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the standard "unknown X 'name'; valid: a, b, c" error."""
    return UnknownNameError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
