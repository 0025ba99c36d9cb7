"""A shareable model directory (``us3l pack``): ``model.safetensors``, ``config.json`` and a ``README.md`` card.

The layout follows the conventions timm uses for models on the Hugging Face Hub, so the folder
uploads as it is and reads like any image model there:

- ``model.safetensors`` (written and read with the ``safetensors`` library; reads are memory-mapped,
  nothing is unpickled). Tensor names: ``model.<key>`` (the backbone), ``bn_bank.<width>.<bn
  layer>.mean|var`` (calibrated BN statistics per width), ``head.weight|bias`` (a shared classifier)
  or ``heads.<width>.weight|bias`` (one per width).
- ``config.json``: timm's keys at the top level (``architecture``, ``num_classes``, ``label_names``,
  ``num_features``, ``model_args``, ``pretrained_cfg`` with ``mean``, ``std``, ``input_size``,
  ``interpolation``, ``crop_pct``, ``crop_mode``), and what a slimmable network needs besides under
  ``us3l`` (format, width range, BN-bank widths, head layout, preprocessing record, training method
  and data, content hash, provenance, and the weights file's sha256 and size).
- ``README.md``: a model card with YAML front matter (library, license, tags, datasets and the
  per-width accuracy as ``model-index``) and the same table in the text.

What is sealed and what is checked: the weights file's sha256 is recorded in ``config.json`` and
verified before a tensor is read, so weights that were edited, re-saved or damaged are refused.
``config.json`` itself is not sealed: it is validated against the weights instead (the architecture
is built from ``architecture`` + ``model_args`` and every tensor's name, shape and dtype must be
what it, the BN-bank widths and the head imply; ``num_features`` must be the network's, and
``num_classes`` and ``label_names`` must match the classifier). So editing ``label_names`` (or the card) is allowed and takes effect, while an edit
that contradicts the weights is refused in one line. ``us3l pack DIR --reseal`` accepts weights
that were deliberately re-saved or edited: it checks every tensor against ``config.json`` and records
the new hash. No absolute path of the packing machine is written (see :func:`portable`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CheckpointError
from .files import atomic_open, atomic_write_text, sha256_file

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
ACCURACY_FILE = "accuracy.json"
MODEL_FORMAT = "us3l-deploy-model"
MODEL_FORMAT_VERSION = 2
LIBRARY = "us3l-deploy"
DEFAULT_LICENSE = "apache-2.0"
#: safetensors dtype names of the tensors a model directory holds.
DTYPE_NAMES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float64": "F64",
               "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
               "torch.uint8": "U8", "torch.bool": "BOOL"}
#: timm's names for how an image reaches the input size (``pretrained_cfg.crop_mode``).
CROP_MODES = {"bilinear": "squash", "shorter-side-crop": "center"}


def is_model_dir(path: str | os.PathLike) -> bool:
    """True for a directory holding ``config.json`` and ``model.safetensors``."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_FILE).is_file() and (p / WEIGHTS_FILE).is_file()


# ----------------------------------------------------------------------------- no machine paths


def portable(obj: Any, run_dir: Path | None = None) -> Any:
    """``obj`` with every absolute path replaced: by its path relative to ``run_dir`` when it lies
    inside it, else by ``None`` (a path on the packing machine means nothing on another one)."""
    if isinstance(obj, dict):
        return {k: portable(v, run_dir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, run_dir) for v in obj]
    if isinstance(obj, str) and _looks_absolute(obj):
        if run_dir is not None:
            try:
                return Path(obj).resolve().relative_to(run_dir.resolve()).as_posix() or "."
            except (ValueError, OSError):
                pass
        return None
    return obj


def _looks_absolute(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    return text.startswith(("/", "~/", "\\\\")) or (len(text) > 2 and text[1] == ":" and text[2] in "/\\")


def _json_only(obj: Any) -> Any:
    """``obj`` without tensors (they go to the weights file), as JSON-compatible data."""
    import torch

    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_only(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [_json_only(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- what the weights must be


def _model_args(config: dict[str, Any]) -> dict[str, Any]:
    args = config.get("model_args")
    if not isinstance(args, dict):
        raise CheckpointError(f"{CONFIG_FILE}: model_args must be a JSON object (the architecture's arguments)")
    return dict(args)


def _build(config: dict[str, Any]) -> Any:
    """The backbone ``architecture`` + ``model_args`` describe (random weights)."""
    from .errors import US3LError
    from .models import get_model

    arch = config.get("architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"{CONFIG_FILE}: architecture must be a registered architecture name")
    try:
        return get_model(arch, **{**_model_args(config), "num_classes": 0})
    except US3LError as exc:
        raise CheckpointError(f"{CONFIG_FILE} describes a network that cannot be built: {exc}") from None
    except TypeError as exc:
        raise CheckpointError(f"{CONFIG_FILE}: model_args do not fit {arch} ({exc})") from None


def expected_tensors(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{tensor name: (shape, safetensors dtype)}`` that ``config.json`` implies: the backbone built
    from ``architecture`` + ``model_args``, the BN bank at ``us3l.bn_bank_widths`` and the classifier
    given by ``num_classes`` and ``us3l.head``.

    Raises:
        CheckpointError: the configuration cannot be built or is inconsistent (one line).
    """
    from .bn import bn_stats

    us3l = _us3l(config)
    model = _build(config)
    out = {f"model.{k}": (tuple(v.shape), DTYPE_NAMES[str(v.dtype)]) for k, v in model.state_dict().items()
           if not k.startswith("fc.")}
    for w in us3l.get("bn_bank_widths") or []:
        try:
            stats = bn_stats(model, float(w))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{CONFIG_FILE}: bn_bank_widths holds {w!r}, not a width ({exc})") from None
        for layer, entry in stats.items():
            for key, t in entry.items():
                out[f"bn_bank.{w}.{layer}.{key}"] = (tuple(t.shape), DTYPE_NAMES[str(t.dtype)])
    head = us3l.get("head")
    k = config.get("num_classes")
    if head:
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise CheckpointError(f"{CONFIG_FILE}: num_classes {k!r} is invalid for a classifier; valid: an integer >= 1")
        if head.get("kind") == "shared":
            d = int(model.max_feature_dim)
            out.update({"head.weight": ((k, d), "F32"), "head.bias": ((k,), "F32")})
        elif head.get("kind") == "per-width":
            for w in head.get("widths") or []:
                d = int(model.feature_dim(float(w)))
                out.update({f"heads.{w}.weight": ((k, d), "F32"), f"heads.{w}.bias": ((k,), "F32")})
        else:
            raise CheckpointError(f"{CONFIG_FILE}: us3l.head.kind {head.get('kind')!r} is invalid; valid: shared, per-width")
    elif k not in (0, None):
        raise CheckpointError(f"{CONFIG_FILE} says num_classes {k} but the weights hold no classifier "
                              "(a backbone: num_classes 0)")
    return out


def _describe(shape: tuple[int, ...], dtype: str) -> str:
    return f"{dtype}[{','.join(map(str, shape))}]"


def check_tensors(found: dict[str, tuple[tuple[int, ...], str]], config: dict[str, Any], where: Path) -> None:
    """Every tensor's name, shape and dtype against what ``config.json`` implies.

    Raises:
        CheckpointError: one line naming what disagrees (a class-count edit is said as such).
    """
    want = expected_tensors(config)
    head_rows = {name: shape[0] for name, (shape, _) in found.items() if name.startswith(("head.", "heads."))}
    k = config.get("num_classes")
    if head_rows and k not in set(head_rows.values()):
        raise CheckpointError(f"{where / CONFIG_FILE} says num_classes {k}, but the classifier in {WEIGHTS_FILE} has "
                              f"{sorted(set(head_rows.values()))[0]} outputs; valid: num_classes "
                              f"{sorted(set(head_rows.values()))[0]} (label_names may be edited, the class count not)")
    missing = sorted(set(want) - set(found))
    extra = sorted(set(found) - set(want))
    wrong = sorted(n for n in set(want) & set(found) if want[n] != found[n])
    if missing or extra or wrong:
        parts = []
        if wrong:
            n = wrong[0]
            parts.append(f"{n} is {_describe(*found[n])}, {CONFIG_FILE} implies {_describe(*want[n])}"
                         + (f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""))
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""))
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}" + (f" (+{len(extra) - 3} more)" if len(extra) > 3 else ""))
        raise CheckpointError(f"{where / WEIGHTS_FILE} does not match {CONFIG_FILE} "
                              f"({config.get('architecture')}): {'; '.join(parts)}")
    nf = config.get("num_features")
    if nf is not None:  # informational for readers of config.json, so it must say the network's truth
        dim = int(_build(config).max_feature_dim)
        if nf != dim:
            raise CheckpointError(f"{where / CONFIG_FILE} says num_features {nf!r}, but {config.get('architecture')} "
                                  f"with its model_args gives {dim} features at full width; valid: num_features "
                                  f"{dim} (label_names may be edited, the network not)")
    labels = config.get("label_names")
    if labels is not None:
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CheckpointError(f"{where / CONFIG_FILE}: label_names must be a list of strings")
        if len(labels) != (k or 0):
            raise CheckpointError(f"{where / CONFIG_FILE} has {len(labels)} label_names for {k or 0} classes; "
                                  f"valid: exactly num_classes names, in class-index order")


# ----------------------------------------------------------------------------- writing


def weight_tensors(ckpt: Any) -> dict[str, Any]:
    """The tensors of checkpoint ``ckpt`` under their model-directory names (contiguous, on CPU)."""
    tensors = {f"model.{k}": v for k, v in ckpt.model.items()}
    for w, stats in ckpt.bn_bank.items():
        for layer, entry in stats.items():
            for key in ("mean", "var"):
                tensors[f"bn_bank.{w}.{layer}.{key}"] = entry[key]
    extra = ckpt.extra or {}
    if extra.get("head"):
        tensors["head.weight"], tensors["head.bias"] = extra["head"]["weight"], extra["head"]["bias"]
    elif extra.get("heads"):
        for w, h in extra["heads"].items():
            tensors[f"heads.{w}.weight"], tensors[f"heads.{w}.bias"] = h["weight"], h["bias"]
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def _preprocess(ckpt: Any, input_size: int) -> dict[str, Any]:
    """The preprocessing record: the task's, else the training data's."""
    task = (ckpt.extra or {}).get("task") or {}
    if task.get("preprocess"):
        return dict(task["preprocess"])
    from .data import DatasetSpec
    from .preprocess import preprocessing_for

    try:
        spec = DatasetSpec.from_dict(portable(ckpt.dataset) if ckpt.dataset else None)
    except Exception:  # a dataset this version does not know: record no preprocessing rather than guess
        return {}
    return preprocessing_for(spec, input_size)


def model_config(ckpt: Any, weights_sha256: str, weights_size: int, source: str | os.PathLike | None = None) -> dict[str, Any]:
    """``config.json`` of checkpoint ``ckpt`` whose weights file has ``weights_sha256``.

    ``source``: the checkpoint file it was packed from (recorded by name; paths inside the run's
    folder are kept relative to it, other absolute paths dropped).
    """
    from .state import state_hash

    run_dir = Path(source).parent if source is not None else None
    model = ckpt.build_model()
    extra = dict(ckpt.extra or {})
    head_cfg: dict[str, Any] | None = None
    num_classes = 0
    if extra.get("head"):
        head = extra.pop("head")
        num_classes = int(head["weight"].shape[0])
        head_cfg = {"kind": "shared", "in_features": int(head["weight"].shape[1])}
    elif extra.get("heads"):
        heads = extra.pop("heads")
        num_classes = int(next(iter(heads.values()))["weight"].shape[0])
        head_cfg = {"kind": "per-width", "widths": sorted(heads, key=float),
                    "between_widths": "nearer head, tie to the narrower"}
    else:
        extra.pop("heads", None)
        extra.pop("head", None)
    task = extra.pop("task", None) or {}
    size = int(task.get("input_size") or getattr(model, "input_size", 0) or 0)
    pre = _preprocess(ckpt, size)
    labels = [str(c) for c in task.get("classes") or []]
    config: dict[str, Any] = {
        "architecture": ckpt.arch,
        "num_classes": num_classes,
        "num_features": int(model.max_feature_dim),
        **({"label_names": labels} if num_classes and labels else {}),
        "model_args": _json_only({k: v for k, v in ckpt.arch_kwargs.items() if k != "num_classes"}),  # the backbone's
        "pretrained_cfg": {
            "input_size": [int(model.in_chans), size, size],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": CROP_MODES.get(str(pre.get("resize")), "squash"),
            "mean": pre.get("mean"), "std": pre.get("std"),
            "num_classes": num_classes,
            "fixed_input_size": bool(getattr(model, "fixed_input_size", False)),
        },
        "us3l": {
            "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
            "width_range": list(ckpt.width_range), "method": ckpt.method, "epoch": int(ckpt.epoch),
            "dataset": portable(_json_only(ckpt.dataset), run_dir),
            "bn_bank_widths": sorted(ckpt.bn_bank, key=float), "head": head_cfg,
            "preprocess": pre or None,
            "task": portable(_json_only({k: v for k, v in task.items() if k not in ("classes", "preprocess")}), run_dir)
            if task else None,
            "content_hash": ckpt.content_hash or state_hash(ckpt.model),
            "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256, "size": int(weights_size)},
            "provenance": {"source": Path(source).name if source is not None else None,
                           "format_version": ckpt.format_version, "versions": dict(ckpt.versions or {}),
                           "train_config": portable(_json_only(ckpt.train_config), run_dir),
                           "extra": portable(_json_only(extra), run_dir)},
        },
    }
    return config


def _write_weights(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> tuple[str, int]:
    """Write ``tensors`` with the safetensors library (atomically); returns (sha256, size)."""
    from safetensors.torch import save

    data = save(tensors, metadata=metadata)
    with atomic_open(path) as fh:
        fh.write(data)
    import hashlib

    return hashlib.sha256(data).hexdigest(), len(data)


def _write_config(config: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")


def pack_checkpoint(ckpt: Any, out_dir: str | os.PathLike, source: str | os.PathLike | None = None,
                    accuracy: dict[str, Any] | None = None, license: str = DEFAULT_LICENSE) -> Path:
    """Write ``ckpt`` as a model directory (each file atomically; ``config.json`` before the card,
    weights first); returns the directory.

    Args:
        accuracy: the accuracy table (``accuracy.json``'s content) for the card, when it describes
            these weights.

    Raises:
        CheckpointError: ``out_dir`` is a file, or not writable.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} exists and is not a directory")
    tensors = weight_tensors(ckpt)
    try:
        out.mkdir(parents=True, exist_ok=True)
        sha, size = _write_weights(tensors, out / WEIGHTS_FILE, {"format": "pt"})
        config = model_config(ckpt, sha, size, source)
        _write_config(config, out / CONFIG_FILE)  # a directory with config.json and matching weights is complete
        atomic_write_text(out / CARD_FILE, model_card(config, out.name, accuracy, license))
    except OSError as exc:
        raise CheckpointError(f"cannot write to {out}: {exc.strerror}") from None
    return out


# ----------------------------------------------------------------------------- reading


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of model directory ``path``, checked to be ours and of a version we read.

    Raises:
        CheckpointError: missing files, not JSON, another format or a newer version (one line).
    """
    p = Path(path)
    if not is_model_dir(p):
        raise CheckpointError(f"{p} is not a model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE}, written by 'us3l pack')")
    try:
        config = json.loads((p / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{p / CONFIG_FILE} is unreadable or not JSON ({str(exc)[:80]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("us3l"), dict) \
            or config["us3l"].get("format") != MODEL_FORMAT:
        old = isinstance(config, dict) and config.get("format") == MODEL_FORMAT
        raise CheckpointError(f"{p / CONFIG_FILE} is not a us3l-deploy model config"
                              + (" of this version (format 1, written before version 2's timm layout): pack the "
                                 "checkpoint again" if old else f" (us3l.format {MODEL_FORMAT!r} expected)"))
    version = config["us3l"].get("format_version", 0)
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{p} has model format version {version}; this tool reads <= {MODEL_FORMAT_VERSION}")
    return config


def _us3l(config: dict[str, Any]) -> dict[str, Any]:
    us3l = config.get("us3l")
    if not isinstance(us3l, dict):
        raise CheckpointError(f"{CONFIG_FILE}: the us3l section is missing")
    return us3l


def verify_weights(p: Path, config: dict[str, Any]) -> None:
    """The weights file is the one packed: its sha256 equals the one in ``config.json``.

    Raises:
        CheckpointError: it differs (edited, re-saved or damaged), or cannot be read.
    """
    entry = _us3l(config).get("weights") or {}
    try:
        actual = sha256_file(p / WEIGHTS_FILE)
    except OSError as exc:
        raise CheckpointError(f"{p / WEIGHTS_FILE} cannot be read ({exc.strerror})") from None
    if actual != entry.get("sha256"):
        raise CheckpointError(f"{p / WEIGHTS_FILE} differs from the weights packed in this directory (its sha256 is "
                              f"not the one in {CONFIG_FILE}: edited, re-saved or damaged); use a good copy, or if "
                              f"the change is intended run 'us3l pack {p} --reseal'")


def tensor_table(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` from the safetensors header (no tensor is read).

    Raises:
        CheckpointError: not a valid safetensors file (one line).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            names = list(f.keys())
            table = {}
            for name in names:
                sl = f.get_slice(name)
                table[name] = (tuple(int(d) for d in sl.get_shape()), str(sl.get_dtype()))
    except Exception as exc:  # SafetensorError and the header parser's own errors
        raise CheckpointError(f"{path} is not a valid safetensors file ({_first_line(exc)})") from None
    return table


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def load_tensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file (the library memory-maps the file).

    Raises:
        CheckpointError: not a valid safetensors file (one line).
    """
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({_first_line(exc)})") from None


def read_model_dir(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The :class:`~us3l.core.checkpoint.Checkpoint` fields a model directory holds (``training=None``);
    ``load_checkpoint(directory)`` builds the checkpoint from them.

    Order: ``config.json`` is read; the weights file's sha256 is checked (``verify``) before any
    tensor is read; the tensor table (names, shapes, dtypes) is validated against ``config.json``;
    then the tensors are loaded.

    Raises:
        CheckpointError: missing files, another format, weights that differ from the packed ones,
            a malformed weights file, or a ``config.json`` that contradicts the weights (one line).
    """
    p = Path(path)
    config = read_config(p)
    if verify:
        verify_weights(p, config)
    check_tensors(tensor_table(p / WEIGHTS_FILE), config, p)
    tensors = load_tensors(p / WEIGHTS_FILE)
    us3l = _us3l(config)
    model: dict[str, Any] = {}
    bank: dict[str, Any] = {}
    head: dict[str, Any] = {}
    heads: dict[str, Any] = {}
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
        else:  # heads (check_tensors admitted nothing else)
            w, key = _split_width(rest)
            heads.setdefault(w, {})[key] = t
    prov = us3l.get("provenance") or {}
    extra = dict(prov.get("extra") or {})
    if head:
        extra["head"] = head
    if heads:
        extra["heads"] = heads
    task = dict(us3l.get("task") or {})
    if head or heads or task:
        pretrained = config.get("pretrained_cfg") or {}
        pre = dict(us3l.get("preprocess") or {})
        for key in ("mean", "std"):  # timm's fields are the ones a user edits
            if pretrained.get(key) is not None:
                pre[key] = list(pretrained[key])
        if pre:
            task["preprocess"] = pre
            task.setdefault("normalization", {"mean": pre.get("mean"), "std": pre.get("std")})
            task["normalization"] = {"mean": pre.get("mean"), "std": pre.get("std")}
        labels = config.get("label_names")
        task["classes"] = list(labels) if labels else [str(i) for i in range(int(config.get("num_classes") or 0))]
        extra["task"] = task
    return dict(arch=config["architecture"], arch_kwargs=_model_args(config), model=model,
                width_range=tuple(us3l.get("width_range") or (0.25, 1.0)), method=us3l.get("method", "untrained"),
                epoch=int(us3l.get("epoch", 0)), train_config=prov.get("train_config") or {},
                dataset=us3l.get("dataset"), bn_bank=bank, training=None, extra=extra,
                versions=prov.get("versions") or {}, format_version=int(prov.get("format_version", 1)),
                content_hash=str(us3l.get("content_hash") or ""))


def _split_width(rest: str) -> tuple[str, str]:
    """``"0.35.layer1.0.bn1.mean"`` -> ``("0.35", "layer1.0.bn1.mean")`` (widths are decimals)."""
    head, _, tail = rest.partition(".")
    if head in ("0", "1") and tail[:1].isdigit():  # "0.35.x" -> head "0", tail "35.x"
        frac, _, tail = tail.partition(".")
        head = f"{head}.{frac}"
    return head, tail


# ----------------------------------------------------------------------------- reseal


@dataclass(frozen=True)
class Reseal:
    """What ``us3l pack DIR --reseal`` did.

    Attributes:
        directory: the model directory. old_sha256 / new_sha256: the weights file's recorded hash before and now.
        old_content_hash / new_content_hash: the backbone's content hash (differs when the values changed:
            accuracy tables measured before no longer join).
        tensors: number of tensors checked.
    """

    directory: Path
    old_sha256: str | None
    new_sha256: str
    old_content_hash: str | None
    new_content_hash: str
    tensors: int

    @property
    def values_changed(self) -> bool:
        return self.old_content_hash != self.new_content_hash


def reseal(path: str | os.PathLike) -> Reseal:
    """Accept the weights now in a model directory: check every tensor's name, shape and dtype
    against ``config.json``, then record the file's sha256 (and the backbone's content hash) there
    and refresh the card.

    Raises:
        CheckpointError: not a model directory, a malformed weights file, or tensors that do not
            match ``config.json`` (nothing is written then).
    """
    from .state import state_hash

    p = Path(path)
    config = read_config(p)
    table = tensor_table(p / WEIGHTS_FILE)
    check_tensors(table, config, p)
    tensors = load_tensors(p / WEIGHTS_FILE)
    content = state_hash({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    us3l = _us3l(config)
    old = dict(us3l.get("weights") or {})
    us3l["weights"] = {"file": WEIGHTS_FILE, "sha256": sha256_file(p / WEIGHTS_FILE),
                       "size": (p / WEIGHTS_FILE).stat().st_size}
    old_content = us3l.get("content_hash")
    us3l["content_hash"] = content
    _write_config(config, p / CONFIG_FILE)
    refresh_card(p)
    return Reseal(p, old.get("sha256"), us3l["weights"]["sha256"], old_content, content, len(table))


def card_license(directory: Path) -> str:
    """The ``license`` of the card already in ``directory`` (a user may have set it), else the default."""
    import re

    try:
        text = (directory / CARD_FILE).read_text(encoding="utf-8")
    except OSError:
        return DEFAULT_LICENSE
    front = text.split("\n---", 1)[0] if text.startswith("---") else ""
    found = re.search(r"^license:\s*(.+?)\s*$", front, re.MULTILINE)
    if not found:
        return DEFAULT_LICENSE
    value = found.group(1)
    try:
        return str(json.loads(value)) if value.startswith('"') else value
    except ValueError:
        return value


def refresh_card(directory: str | os.PathLike) -> Path:
    """Rewrite ``README.md`` of a model directory from its ``config.json`` and the ``accuracy.json``
    measured on its weights (after ``us3l eval DIR`` or ``--reseal``), keeping the card's license."""
    p = Path(directory)
    config = read_config(p)
    accuracy = read_accuracy_for(p, str(_us3l(config).get("content_hash") or ""))
    return atomic_write_text(p / CARD_FILE, model_card(config, p.name, accuracy, card_license(p)))


def read_accuracy_for(directory: Path, content_hash: str) -> dict[str, Any] | None:
    """``accuracy.json`` in ``directory`` when it was measured on weights with ``content_hash``."""
    path = directory / ACCURACY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("checkpoint") == content_hash else None


# ----------------------------------------------------------------------------- the card


def _yaml(value: Any) -> str:
    """A YAML scalar: JSON's quoting is valid YAML (double-quoted, same escapes)."""
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else json.dumps(value)


_METRICS = (("top1", "top-1"), ("linear", "linear probe"), ("knn", "kNN"))


def _card_rows(accuracy: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The table's rows with one line per measured network (width, precision, outputs, file): the
    per-protocol rows of ``accuracy.json`` (format 2) merged back, in the table's order."""
    from .accuracy import normalize_rows

    rows = [r for r in (accuracy or {}).get("results") or [] if isinstance(r, dict) and "width" in r]
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    for r in normalize_rows(rows):
        key = (r["width"], r.get("precision"), r.get("outputs"), r.get("source"), r.get("artifact"))
        merged.setdefault(key, {}).update(r)
    return list(merged.values())


def model_card(config: dict[str, Any], name: str, accuracy: dict[str, Any] | None = None,
               license: str = DEFAULT_LICENSE) -> str:
    """``README.md`` of a model directory: front matter (library, license, tags, datasets, the
    per-width accuracy as ``model-index``) and a text with the accuracy table and how to use it."""
    from .width import format_width

    us3l = _us3l(config)
    classifier = bool(config.get("num_classes"))
    task = "image-classification" if classifier else "image-feature-extraction"
    dataset = (us3l.get("dataset") or {}).get("name")
    rows = _card_rows(accuracy)
    metrics = [(key, label) for key, label in _METRICS if any(isinstance(r.get(key), (int, float)) for r in rows)]
    lines = ["---", f"library_name: {LIBRARY}", f"license: {_yaml(license)}", f"pipeline_tag: {task}", "tags:"]
    lines += [f"- {_yaml(t)}" for t in (task, "us3l", "slimmable-network", "self-supervised-learning",
                                         str(config.get("architecture")))]
    if dataset:
        lines += ["datasets:", f"- {_yaml(dataset)}"]
    if rows and metrics:
        lines += ["model-index:", f"- name: {_yaml(name)}", "  results:", "  - task:", f"      type: {task}"]
        if dataset:
            lines += ["    dataset:", f"      name: {_yaml(dataset)}", f"      type: {_yaml(dataset)}"]
        lines += ["    metrics:"]
        for r in rows:
            for key, label in metrics:
                if isinstance(r.get(key), (int, float)):
                    what = f"{label} accuracy, width {format_width(r['width'])}, {r.get('precision') or 'fp32'}"
                    lines += [f"    - name: {_yaml(what)}", "      type: accuracy", f"      value: {float(r[key]):.6g}"]
    lines += ["---", "", f"# {name}", ""]
    lo, hi = us3l.get("width_range") or (0.25, 1.0)
    lines += [f"A universally slimmable {config.get('architecture')} ({us3l.get('method')}, "
              f"{us3l.get('epoch')} epoch(s){', ' + dataset if dataset else ''}): one set of weights for every "
              f"width in [{lo:g}, {hi:g}]. "
              + (f"Classifier over {config['num_classes']} classes." if classifier
                 else f"A backbone: {config.get('num_features')} features at full width."), ""]
    if rows and metrics:
        lines += ["## Accuracy per width", "",
                  "| width | precision | measured on | " + " | ".join(m for _, m in metrics) + " |",
                  "|---|---|---|" + "---|" * len(metrics)]
        for r in rows:
            cells = [f"{100 * r[k]:.2f} %" if isinstance(r.get(k), (int, float)) else "" for k, _ in metrics]
            on = f"`{r['artifact']}`" if r.get("artifact") else f"PyTorch ({r.get('outputs') or 'features'})"
            lines.append(f"| {format_width(r['width'])} | {r.get('precision') or 'fp32'} | {on} | "
                         + " | ".join(cells) + " |")
        proto = (accuracy or {}).get("protocol") or {}
        if proto.get("method"):
            lines += ["", f"Measured by `us3l eval` ({proto['method']})."]
        lines.append("")
    lines += ["## Use", "", "```bash", f"us3l widths {name}", f"us3l export {name} --widths 0.25:1.0:0.25 -o onnx",
              f"us3l bench {name} --budget-ms 2", "```", "",
              "`config.json` follows timm's layout (`architecture`, `model_args`, `pretrained_cfg`); "
              "`model.safetensors` holds the backbone, the BN statistics per width"
              + (" and the classifier" if classifier else "") + ". Written by us3l-deploy.", ""]
    return "\n".join(lines)
