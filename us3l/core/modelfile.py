"""A shareable model directory: ``model.safetensors`` + ``config.json`` (``us3l pack``).

The layout follows the Hugging Face Hub convention for a model repository (weights in
``model.safetensors``, a JSON ``config.json`` beside them), so ``huggingface_hub`` can upload and
download the folder as it is. It holds what is needed to *use* the network and nothing to resume
training: architecture, width range, weights, BN bank, classifier head, class names,
normalisation, preprocessing and provenance; no optimiser, EMA, SSL projector/predictor or RNG state.

``model.safetensors`` is written and read here (the format is small: an 8-byte little-endian
header length, a JSON header ``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``
padded with spaces to a multiple of 8 bytes, then the raw little-endian tensor bytes), so no extra
dependency is needed and nothing is unpickled. Tensor names:

- ``model.<key>``: the backbone state dict;
- ``bn_bank.<width>.<bn layer>.mean|var``: calibrated BN statistics per width;
- ``head.weight|bias``: a shared classifier head; ``heads.<width>.weight|bias``: per-width heads.

:func:`load_model_dir` rebuilds a :class:`~us3l.core.checkpoint.Checkpoint` (``training=None``) and
verifies the whole payload (the weights file's sha256 and the config's own, both recorded in
config.json) and the backbone's content hash, so every command that takes a checkpoint takes the directory
(``load_checkpoint`` dispatches here for a directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .files import atomic_write_bytes, atomic_write_text, sha256_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_FORMAT = "us3l-deploy-model"
MODEL_FORMAT_VERSION = 1
_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}
_FROM_NAME = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` in the safetensors format (names sorted; deterministic bytes)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            raise CheckpointError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot store here")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file.

    Raises:
        CheckpointError: truncated or malformed file (one line).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None
    bad = f"{path} is not a valid safetensors file"
    if len(raw) < 8:
        raise CheckpointError(f"{bad} (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > MAX_HEADER or 8 + n > len(raw):
        raise CheckpointError(f"{bad} (header length {n} exceeds the file)")
    try:
        header = json.loads(raw[8:8 + n])
    except ValueError:
        raise CheckpointError(f"{bad} (header is not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{bad} (header is not a JSON object)")
    meta = header.pop("__metadata__", None) or {}
    body = memoryview(raw)[8 + n:]
    tensors = {}
    for name, spec in header.items():
        try:
            dtype = _FROM_NAME[spec["dtype"]]
            shape = [int(s) for s in spec["shape"]]
            start, end = (int(v) for v in spec["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{bad} (entry {name!r} lacks dtype/shape/data_offsets or has an unknown dtype)") from None
        count = 1
        for s in shape:
            count *= s
        if not 0 <= start <= end <= len(body) or end - start != count * torch.empty((), dtype=dtype).element_size():
            raise CheckpointError(f"{bad} (entry {name!r} points outside the data or has the wrong size)")
        buf = bytearray(body[start:end])
        flat = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(shape).clone() if count else torch.empty(shape, dtype=dtype)
    return tensors, {str(k): str(v) for k, v in meta.items()}


def is_model_dir(path: str | os.PathLike) -> bool:
    """True for a directory holding ``config.json`` and ``model.safetensors``."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


def _json_only(obj: Any) -> Any:
    """``obj`` without tensors (they go to the weights file), as JSON-compatible data."""
    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_only(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [_json_only(v) for v in obj]
    return obj


def pack_files(ckpt: Any, source: str | None = None) -> tuple[bytes, str]:
    """``(model.safetensors bytes, config.json text)`` of checkpoint ``ckpt``."""
    from .checkpoint import state_hash

    tensors = {f"model.{k}": v for k, v in ckpt.model.items()}
    for w, stats in ckpt.bn_bank.items():
        for layer, entry in stats.items():
            for key in ("mean", "var"):
                tensors[f"bn_bank.{w}.{layer}.{key}"] = entry[key]
    extra = dict(ckpt.extra or {})
    head_cfg = None
    if extra.get("head"):
        head = extra.pop("head")
        tensors["head.weight"], tensors["head.bias"] = head["weight"], head["bias"]
        head_cfg = {"kind": "shared", "num_classes": int(head["weight"].shape[0]), "in_features": int(head["weight"].shape[1])}
    elif extra.get("heads"):
        heads = extra.pop("heads")
        for w, h in heads.items():
            tensors[f"heads.{w}.weight"], tensors[f"heads.{w}.bias"] = h["weight"], h["bias"]
        first = next(iter(heads.values()))
        head_cfg = {"kind": "per-width", "num_classes": int(first["weight"].shape[0]),
                    "widths": sorted(heads, key=float), "between_widths": "nearer head, tie to the narrower"}
    task = extra.pop("task", None)
    content_hash = ckpt.content_hash or state_hash(ckpt.model)
    config = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "library_name": "us3l-deploy",
        "arch": ckpt.arch, "arch_kwargs": _json_only(ckpt.arch_kwargs), "width_range": list(ckpt.width_range),
        "method": ckpt.method, "epoch": int(ckpt.epoch), "dataset": ckpt.dataset,
        "bn_bank_widths": sorted(ckpt.bn_bank, key=float), "head": head_cfg,
        "classes": list((task or {}).get("classes") or []) or None,
        "normalization": (task or {}).get("normalization"), "input_size": (task or {}).get("input_size"),
        "preprocess": (task or {}).get("preprocess"), "task": _json_only(task),
        "content_hash": content_hash,
        "provenance": {"source": source, "format_version": ckpt.format_version, "versions": dict(ckpt.versions or {}),
                       "train_config": _json_only(ckpt.train_config), "extra": _json_only(extra)},
        "weights": {"file": WEIGHTS_FILE, "bn_bank": "bn_bank.<width>.<layer>.mean|var", "model": "model.<key>",
                    "head": "head.weight|bias or heads.<width>.weight|bias"},
    }
    meta = {"format": "pt", "us3l.arch": ckpt.arch, "us3l.content_hash": content_hash}
    weights = safetensors_bytes(tensors, meta)
    # The whole payload is verifiable (weights, BN bank, heads, metadata): the weights file's sha256 is
    # recorded in the config, and the config's own sha256 (of its canonical JSON without that field) too.
    config["files"] = {WEIGHTS_FILE: {"sha256": hashlib.sha256(weights).hexdigest(), "size": len(weights)}}
    config[CONFIG_SEAL] = _config_digest(config)
    return weights, json.dumps(config, indent=2, sort_keys=True) + "\n"


CONFIG_SEAL = "config_sha256"


def _config_digest(config: dict) -> str:
    body = {k: v for k, v in config.items() if k != CONFIG_SEAL}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _verify_payload(p: Path, config: dict) -> None:
    """Refuse a model directory whose config or weights file changed after ``us3l pack`` wrote them."""
    if config.get(CONFIG_SEAL) != _config_digest(config):
        raise CheckpointError(f"model directory {p} is corrupt: {CONFIG_FILE} does not match the sha256 sealed in it "
                              "(edited or damaged); pack the checkpoint again")
    entry = (config.get("files") or {}).get(WEIGHTS_FILE) or {}
    if sha256_file(p / WEIGHTS_FILE) != entry.get("sha256"):
        raise CheckpointError(f"model directory {p} is corrupt: {WEIGHTS_FILE} does not match the sha256 in {CONFIG_FILE} "
                              "(damaged on disk or in transfer); pack the checkpoint again")


def pack_checkpoint(ckpt: Any, out_dir: str | os.PathLike, source: str | None = None) -> Path:
    """Write ``ckpt`` as a model directory (each file atomically); returns the directory.

    Raises:
        CheckpointError: ``out_dir`` is a file, or not writable.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    weights, config = pack_files(ckpt, source)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / WEIGHTS_FILE, weights)
        atomic_write_text(out / CONFIG_FILE, config)  # last: a directory with config.json is complete
    except OSError as exc:
        raise CheckpointError(f"cannot write to {out}: {exc.strerror}") from None
    return out


def load_model_dir(path: str | os.PathLike, verify: bool = True) -> Any:
    """The :class:`~us3l.core.checkpoint.Checkpoint` a model directory holds (``training=None``).

    Raises:
        CheckpointError: missing files, another format, malformed weights, or weights that do not
            match the recorded content hash.
    """
    from .checkpoint import Checkpoint, state_hash

    p = Path(path)
    if not is_model_dir(p):
        raise CheckpointError(f"{p} is not a model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}, written by 'us3l pack')")
    try:
        config = json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p / CONFIG_FILE} is unreadable or not JSON ({str(exc)[:80]})") from None
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{p / CONFIG_FILE} is not a us3l-deploy model config (format {MODEL_FORMAT!r} expected)")
    if int(config.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{p} has model format version {config['format_version']}; this tool reads <= {MODEL_FORMAT_VERSION}")
    if verify:
        try:
            _verify_payload(p, config)
        except OSError as exc:
            raise CheckpointError(f"{p / WEIGHTS_FILE} cannot be read ({exc.strerror})") from None
    tensors, _ = read_safetensors(p / WEIGHTS_FILE)
    model, bank, head, heads = {}, {}, {}, {}
    for name, t in tensors.items():
        group, _, rest = name.partition(".")
        if group == "model":
            model[rest] = t
        elif group == "bn_bank":
            w, layer_key = _split_width(rest)
            layer, _, key = layer_key.rpartition(".")
            bank.setdefault(w, {}).setdefault(layer, {})[key] = t
        elif group == "head":
            head[rest] = t
        elif group == "heads":
            w, key = _split_width(rest)
            heads.setdefault(w, {})[key] = t
        else:
            raise CheckpointError(f"{p / WEIGHTS_FILE} holds an unknown tensor {name!r}")
    prov = config.get("provenance") or {}
    extra = dict(prov.get("extra") or {})
    if head:
        extra["head"] = head
    if heads:
        extra["heads"] = heads
    if config.get("task"):
        extra["task"] = config["task"]
    try:
        ckpt = Checkpoint(arch=config["arch"], arch_kwargs=dict(config["arch_kwargs"]), model=model,
                          width_range=tuple(config.get("width_range") or (0.25, 1.0)), method=config.get("method", "untrained"),
                          epoch=int(config.get("epoch", 0)), train_config=prov.get("train_config") or {},
                          dataset=config.get("dataset"), bn_bank=bank, training=None, extra=extra,
                          versions=prov.get("versions") or {}, format_version=int(prov.get("format_version", 1)),
                          content_hash=str(config.get("content_hash") or ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p / CONFIG_FILE} lacks or mangles a required field ({exc})") from None
    if verify and ckpt.content_hash and state_hash(ckpt.model) != ckpt.content_hash:
        raise CheckpointError(f"model directory {p} is corrupt: weights do not match the recorded content hash")
    return ckpt


def _split_width(rest: str) -> tuple[str, str]:
    """``"0.35.layer1.0.bn1.mean"`` -> ``("0.35", "layer1.0.bn1.mean")`` (widths are decimals)."""
    head, _, tail = rest.partition(".")
    if head in ("0", "1") and tail[:1].isdigit():  # "0.35.x" -> head "0", tail "35.x"
        frac, _, tail = tail.partition(".")
        head = f"{head}.{frac}"
    return head, tail
