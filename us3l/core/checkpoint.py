"""Self-describing checkpoints, loadable without running code from the file.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts written with
``torch.save`` and read with ``torch.load(weights_only=True)``: a pickle that tries to build any
other object is refused. Writes are atomic (temp file in the same directory, fsync, rename).
The ``content_hash`` (sha256 over the backbone tensors) identifies the weights in artifacts and
latency tables and is verified on load.

Integrity seal (format 2): the whole file is hashed. ``torch.save`` writes a zip archive; its
end record gets the comment ``us3l-sha256:<hex>``, the sha256 of every byte ``torch.save`` wrote
(weights, BN bank, heads, optimizer state, metadata, the archive's own records). Zip readers,
``torch.load`` among them, ignore the comment; :func:`load_checkpoint` recomputes the hash before
unpickling anything and refuses a file whose bytes changed. Files of format 1 (written before
the seal) still load, with a warning, and only their weights are verified; rewriting them (for
example ``us3l eval CKPT --store-bn``) seals them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .state import state_hash
from .version import __version__
from .errors import CheckpointError
from .files import atomic_open
from .width import DEFAULT_WIDTH_RANGE, format_width, round_width

if TYPE_CHECKING:
    from .models.base import SlimmableNet

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: whole-file sha256 seal in the zip comment; 1: weights hash only
SEAL_PREFIX = b"us3l-sha256:"
SEAL_LEN = len(SEAL_PREFIX) + 64
_EOCD = b"PK\x05\x06"  # zip end-of-central-directory signature; the record is 22 bytes + comment
_EOCD_LEN = 22
MAGIC = "us3l-deploy-checkpoint"
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor], prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> dict[str, torch.Tensor]:
    """Remove DDP / torch.compile wrapper prefixes from state-dict keys (the one place that does)."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def library_versions() -> dict[str, str]:
    return {"us3l": __version__, "torch": str(torch.__version__), "python": platform.python_version()}


def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """Convert ``obj`` to what ``torch.load(weights_only=True)`` accepts (tensors, numbers, str,
    bool, None, lists, tuples, dicts); str/int/float subclasses, numpy scalars/arrays and paths are
    converted, anything else raises ``TypeError`` naming where it was found."""
    if obj is None or type(obj) in (bool, int, float, str, bytes) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        return {to_plain(k, where): to_plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if isinstance(obj, bool):
        return bool(obj)
    for kind in (str, int, float):
        if isinstance(obj, kind):
            return kind(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    module = type(obj).__module__
    if module == "numpy":
        import numpy as np

        return torch.from_numpy(np.ascontiguousarray(obj)) if isinstance(obj, np.ndarray) else obj.item()
    if isinstance(obj, torch.dtype) or isinstance(obj, torch.device):
        return str(obj)
    raise TypeError(f"{where} holds a {type(obj).__name__}, which a weights-only checkpoint cannot store")


@dataclass
class Checkpoint:
    """One universally slimmable network and everything needed to use it later.

    Attributes:
        arch / arch_kwargs: registry name and constructor arguments of the backbone.
        model: backbone state dict (our key layout).
        width_range: widths the network was trained for.
        method: "us3l", "naive", "naive-contrastive", "single", "reference" or "untrained".
        epoch: completed epochs.
        train_config: the training configuration (JSON-like).
        dataset: ``DatasetSpec.to_dict()`` of the training data (for BN recalibration later).
        bn_bank: ``format_width(w) -> {bn_layer: {"mean", "var"}}`` calibrated statistics per width.
        training: resume state (heads, teacher, optimizer, RNG...), or None in deployable files.
        extra: free JSON-like metadata.
        versions / format_version / content_hash: provenance, filled by :func:`save_checkpoint`.
    """

    arch: str
    arch_kwargs: dict[str, Any]
    model: dict[str, torch.Tensor]
    width_range: tuple[float, float] = DEFAULT_WIDTH_RANGE
    method: str = "untrained"
    epoch: int = 0
    train_config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] | None = None
    bn_bank: dict[str, dict[str, dict[str, torch.Tensor]]] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    format_version: int = FORMAT_VERSION
    content_hash: str = ""

    @classmethod
    def from_model(cls, model: SlimmableNet, **fields: Any) -> Checkpoint:
        """Snapshot a registry-built model (``get_model``) into a checkpoint."""
        if not getattr(model, "arch", ""):
            raise CheckpointError("model has no 'arch' attribute; build it with us3l.core.models.get_model")
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        fields.setdefault("width_range", tuple(model.width_range))
        return cls(arch=model.arch, arch_kwargs=dict(model.arch_kwargs), model=state, **fields)

    def build_model(self, num_classes: int = 0) -> SlimmableNet:
        """Rebuild the backbone and load the weights strictly.

        Raises:
            CheckpointError: unknown architecture or missing/unexpected/mis-shaped keys (listed).
        """
        from .errors import US3LError
        from .models import get_model

        kwargs = dict(self.arch_kwargs)
        kwargs["num_classes"] = num_classes
        try:
            model = get_model(self.arch, **kwargs)
        except US3LError as exc:
            raise CheckpointError(f"checkpoint architecture cannot be built: {exc}") from None
        state = strip_prefixes(self.model)
        own = model.state_dict()
        missing = sorted(k for k in own if k not in state and not k.startswith("fc."))
        unexpected = sorted(k for k in state if k not in own)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint weights do not match {self.arch}: missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                f"unexpected {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}"
            )
        bad = [k for k in state if tuple(state[k].shape) != tuple(own[k].shape)]
        if bad:
            k = bad[0]
            raise CheckpointError(f"checkpoint tensor {k} has shape {tuple(state[k].shape)}, {self.arch} needs {tuple(own[k].shape)}")
        model.load_state_dict(state, strict=not num_classes)
        return model

    def add_bn_stats(self, width: float, stats: dict[str, dict[str, torch.Tensor]]) -> None:
        """Store calibrated BN statistics for ``width`` in the bank."""
        self.bn_bank[format_width(width)] = {k: {"mean": v["mean"].cpu(), "var": v["var"].cpu()} for k, v in stats.items()}

    def bn_stats_for(self, width: float) -> dict[str, dict[str, torch.Tensor]] | None:
        """The bank's statistics for ``width`` (None if that width was never calibrated)."""
        return self.bn_bank.get(format_width(width))

    def bank_entry(self, model: nn.Module, width: float, divisor: int) -> tuple[float, dict[str, dict[str, torch.Tensor]]] | None:
        """``(bank width, statistics)`` valid for ``model`` at ``width``: the width's own entry, or that
        of a bank width slicing to the identical network (:func:`~us3l.core.slicing.find_aliases`).
        The bank holds divisor-8 statistics only, so other divisors get ``None`` (recalibrate)."""
        from .slicing import find_aliases
        from .width import DEFAULT_DIVISOR

        if divisor != DEFAULT_DIVISOR or not self.bn_bank:
            return None
        own = self.bn_stats_for(width)
        if own is not None:
            return round_width(width), own
        for w in self.bank_widths():
            if find_aliases(model, [w, width], divisor)[round_width(width)] == round_width(w):
                return w, self.bn_bank[format_width(w)]
        return None

    def bank_widths(self) -> list[float]:
        return sorted(round_width(float(k)) for k in self.bn_bank)

    def to_dict(self) -> dict[str, Any]:
        return {
            "magic": MAGIC,
            "format_version": self.format_version,
            "arch": self.arch,
            "arch_kwargs": self.arch_kwargs,
            "width_range": list(self.width_range),
            "method": self.method,
            "epoch": int(self.epoch),
            "train_config": self.train_config,
            "dataset": self.dataset,
            "model": self.model,
            "bn_bank": self.bn_bank,
            "training": self.training,
            "extra": self.extra,
            "versions": self.versions,
            "content_hash": self.content_hash,
        }


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> str:
    """Write ``ckpt`` atomically to ``path`` (temp file + fsync + rename); returns the content hash."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create directory {path.parent}: {exc.strerror}") from None
    ckpt.content_hash = state_hash(ckpt.model)
    ckpt.versions = library_versions()
    ckpt.format_version = FORMAT_VERSION
    payload = to_plain(ckpt.to_dict())
    with atomic_open(path) as fh:
        hashing = _HashingWriter(fh)
        try:
            # torch.save writes to any object with write() and flush() (its documented contract);
            # its stub names only IO[bytes].
            torch.save(payload, hashing)  # type: ignore[arg-type]
        except RuntimeError as exc:  # torch's zip writer hides a failed write (a full disk) behind its own error
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, OSError):
                raise cause from None
            raise
        seal = SEAL_PREFIX + hashing.sha.hexdigest().encode()
        fh.seek(-2, os.SEEK_END)  # the end record's comment length, 0 as torch.save wrote it
        fh.write(len(seal).to_bytes(2, "little"))
        fh.write(seal)
    return ckpt.content_hash


class _HashingWriter:
    """A write-only file object that hashes what passes through it (``torch.save`` only writes)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def file_seal(path: str | os.PathLike) -> tuple[str, str] | None:
    """``(recorded, actual)`` sha256 of a sealed checkpoint file, or None when it carries no seal.

    A file whose last bytes read ``us3l-sha256:`` counts as sealed; its end record must then be
    intact (signature, comment length), else the recorded value is returned as ``"damaged"``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < SEAL_LEN + _EOCD_LEN:
        return None
    with path.open("rb") as fh:
        fh.seek(size - SEAL_LEN - _EOCD_LEN)
        tail = fh.read()
        seal = tail[_EOCD_LEN:]
        if not seal.startswith(SEAL_PREFIX):
            return None
        eocd = tail[:_EOCD_LEN]
        recorded = seal[len(SEAL_PREFIX):].decode("ascii", "replace")
        if eocd[:4] != _EOCD or int.from_bytes(eocd[-2:], "little") != SEAL_LEN:
            recorded = "damaged"
        sha = hashlib.sha256()
        fh.seek(0)
        remaining = size - SEAL_LEN - 2
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 22))
            if not chunk:
                break
            sha.update(chunk)
            remaining -= len(chunk)
        sha.update(b"\x00\x00")
    return recorded, sha.hexdigest()


_FIELDS = ("arch", "arch_kwargs", "model")


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> Checkpoint:
    """Load a checkpoint without executing any code from it.

    Raises:
        CheckpointError: missing, unreadable, truncated, corrupt, code-carrying or foreign files,
            and files whose weights do not match their recorded hash (one line each).
    """
    path = Path(path)
    if path.is_dir():  # a model directory written by 'us3l pack' (model.safetensors + config.json)
        return _load_model_dir(path, verify)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist or is not a file")
    try:
        seal = file_seal(path) if verify else None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path} cannot be read ({exc.strerror})") from None
    if seal is not None and seal[0] != seal[1]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its bytes do not match the sha256 sealed in it "
                              "(damaged on disk or in transfer); use another copy or retrain")
    data = load_plain(path)
    if not isinstance(data, dict) or data.get("magic") != MAGIC:
        raise CheckpointError(
            f"{path} is not a us3l-deploy checkpoint (a reference US3L checkpoint? convert it with 'us3l import')"
        )
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {data['format_version']}; this tool reads <= {FORMAT_VERSION}")
    version = data.get("format_version", 0)
    if verify and seal is None and (not isinstance(version, int) or version >= 2):
        raise CheckpointError(f"checkpoint {path} is corrupt: its integrity seal is missing or damaged; "
                              "use another copy or retrain")
    if verify and seal is None:
        log.warning("checkpoint %s predates whole-file integrity hashes (format %s): only its weights are verified; "
                    "rewrite it to seal it (e.g. us3l eval %s --store-bn)", path, version, path)
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks required field(s) {', '.join(missing)}")
    ckpt = Checkpoint(
        arch=data["arch"],
        arch_kwargs=dict(data["arch_kwargs"]),
        model=data["model"],
        width_range=tuple(data.get("width_range", DEFAULT_WIDTH_RANGE)),
        method=data.get("method", "untrained"),
        epoch=int(data.get("epoch", 0)),
        train_config=data.get("train_config") or {},
        dataset=data.get("dataset"),
        bn_bank=data.get("bn_bank") or {},
        training=data.get("training"),
        extra=data.get("extra") or {},
        versions=data.get("versions") or {},
        format_version=int(data.get("format_version", FORMAT_VERSION)),
        content_hash=data.get("content_hash", ""),
    )
    if verify and ckpt.content_hash and state_hash(ckpt.model) != ckpt.content_hash:
        raise CheckpointError(f"checkpoint {path} is corrupt: weights do not match the recorded content hash")
    return ckpt


CODE_REFUSED = ("contains Python objects that would execute code when loaded (a pickle with executable globals); "
                "refused, nothing from it was run. Load only checkpoints written by us3l (train, import), "
                "or convert a trusted reference file with 'us3l import'")


def load_plain(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(weights_only=True)`` with its failures as one-line :class:`CheckpointError`s
    (``what`` names the file in them: a code-carrying pickle is reported as such, not as corrupt).

    torch warns once (a long multi-line text) when a weights-only load fails; that warning is
    silenced here because the error says the same in one line.
    """
    import warnings

    from .files import foreign_file

    not_torch = foreign_file(path)
    if not_torch:
        raise CheckpointError(f"{what} {path} is not a PyTorch checkpoint ({not_torch})")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*weights_only", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"(?s).*Weights only load failed", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        lowered = text.lower()
        if any(k in lowered for k in ("unsupported global", "unsupported class", "weights only load failed",
                                      "unsupported operand")) and "eof" not in lowered:
            raise CheckpointError(f"{what} {path} {CODE_REFUSED}") from None
        raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch file ({first[:120]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError, KeyError,
            IndexError, UnicodeDecodeError, MemoryError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{what} {path} is truncated or corrupt ({first[:120]})") from None


def _load_model_dir(path: Path, verify: bool) -> Checkpoint:
    """The checkpoint a model directory holds (``training=None``): its weights file checked against
    the sha256 in config.json, config.json against the weights, and the backbone against the
    recorded content hash (see :mod:`us3l.core.modelfile`)."""
    from .modelfile import CONFIG_FILE, read_model_dir

    fields = read_model_dir(path, verify)
    try:
        ckpt = Checkpoint(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path / CONFIG_FILE} lacks or mangles a required field ({exc})") from None
    if verify and ckpt.content_hash and state_hash(ckpt.model) != ckpt.content_hash:
        raise CheckpointError(f"{path / CONFIG_FILE}: content_hash does not describe the backbone in the weights "
                              f"(edited); run 'us3l pack {path} --reseal' to record it")
    return ckpt
