"""Task-model calls: ``finetune``, ``predict`` and ``pack`` (re-exported by :mod:`us3l.api.commands`).

Each builds its room's config, calls the room's entry point and returns a typed, torch-free result.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from ..core.errors import ConfigError
from .progress import ProgressArg, resolve_progress
from .results import WidthAccuracy

if TYPE_CHECKING:
    from us3l.trainer.finetune import FinetuneConfig

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`finetune` wrote: the task checkpoint and its top-1 per width.

    Attributes:
        checkpoint: ``OUT/checkpoint.pt`` (backbone, per-width or shared head, class names, normalisation, BN bank).
        accuracy_file: ``OUT/accuracy.json`` (top-1 per width; ``us3l bench`` joins it).
        checkpoint_hash: the task checkpoint's content hash.
        results: one :class:`WidthAccuracy` (``top1`` set) per evaluated width.
        seconds: wall time; history: per-epoch mean losses.
        notices: one line each: fine-tuning data other than the SSL checkpoint's; a width whose
            top-1 is below the SSL checkpoint's kNN at that width (under-trained).
    """

    checkpoint: Path
    accuracy_file: Path
    checkpoint_hash: str
    results: tuple[WidthAccuracy, ...]
    seconds: float
    history: tuple[dict[str, float], ...] = ()
    notices: tuple[str, ...] = ()  # one-line cross-checks (other data than the SSL run's, a width below its kNN)

    def top1(self, width: float) -> float:
        """Top-1 of ``width``.

        Raises:
            ConfigError: the width was not evaluated.
        """
        for r in self.results:
            if abs(r.width - width) < 1e-9 and r.top1 is not None:
                return float(r.top1)
        raise ConfigError(f"width {width} was not evaluated; evaluated: {', '.join(str(r.width) for r in self.results)}")

    def to_rows(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.results]


@dataclass(frozen=True)
class ClassScore:
    index: int
    name: str
    prob: float


@dataclass(frozen=True)
class Prediction:
    """Top-k classes of one image (``logits`` only for a logits artifact).

    Attributes:
        image: the file (the argument joined with its path below a directory argument).
        name: how tables show it: the path relative to the directory argument when there was one
            argument, else ``image`` (``a/000.jpg`` and ``b/000.jpg`` stay apart).
    """

    image: Path
    top: tuple[ClassScore, ...]
    logits: tuple[float, ...] | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.top[0].name

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"image": str(self.image), "name": self.name or str(self.image),
                             "top": [{"index": c.index, "name": c.name, "prob": c.prob} for c in self.top]}
        if self.logits is not None:
            d["logits"] = list(self.logits)
        return d


@dataclass(frozen=True)
class SkippedImage:
    """A file ``predict`` could not read (``--on-bad-image skip``) and why."""

    image: Path
    reason: str
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"image": str(self.image), "name": self.name or str(self.image), "reason": self.reason}


@dataclass(frozen=True)
class PredictResult:
    artifact: Path
    outputs: str
    width: float | None
    predictions: tuple[Prediction, ...]
    skipped: tuple[SkippedImage, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "outputs": self.outputs, "width": self.width,
                "predictions": [p.to_dict() for p in self.predictions],
                "skipped": [s.to_dict() for s in self.skipped]}


@dataclass(frozen=True)
class PackResult:
    """The model directory :func:`pack` wrote, and the sizes before and after."""

    directory: Path
    files: tuple[Path, ...]
    size_bytes: int
    source_bytes: int
    content_hash: str
    resealed: Any = None  # us3l.core.modelfile.Reseal after pack(..., reseal=True)

    def to_dict(self) -> dict[str, Any]:
        out = {"directory": str(self.directory), "files": [str(f) for f in self.files], "size_bytes": self.size_bytes,
               "source_bytes": self.source_bytes, "content_hash": self.content_hash}
        if self.resealed is not None:
            r = self.resealed
            out["resealed"] = {"old_sha256": r.old_sha256, "new_sha256": r.new_sha256, "tensors": r.tensors,
                               "values_changed": r.values_changed, "old_content_hash": r.old_content_hash}
        return out


def _checkpoint_arg(checkpoint: Any, what: str) -> str:
    import sys

    model_cls = getattr(sys.modules.get("us3l.api.model"), "SlimmableModel", None)
    if model_cls is not None and isinstance(checkpoint, model_cls):
        return str(checkpoint._saved_path(what))
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise ConfigError(f"{what} needs a checkpoint path or model directory, got {type(checkpoint).__name__}")
    from ..core.files import check_torch_file

    check_torch_file(checkpoint)  # a text file is said to be one before torch is even imported
    return str(checkpoint)


def finetune(checkpoint: Any, config: FinetuneConfig | None = None, *, recipe: str | None = None,
             progress: ProgressArg = None, **overrides: Any) -> FinetuneResult:
    """Universally slimmable supervised fine-tuning of a checkpoint's backbone plus one head per width (or a shared head).

    Args:
        checkpoint: the SSL checkpoint (file, packed model directory or saved :class:`SlimmableModel`).
        config: a full :class:`us3l.trainer.finetune.FinetuneConfig` (its ``checkpoint`` is replaced).
        recipe: ``digits`` (default), ``fashion_mnist``, ``cifar`` or ``paper`` (see ``us3l finetune --help``).
        overrides: :class:`~us3l.trainer.finetune.FinetuneConfig` fields (``None`` values ignored), e.g.
            ``epochs=5, freeze_backbone=True, out_dir="runs/ft"``.

    Returns:
        :class:`FinetuneResult` (task checkpoint, ``accuracy.json``, top-1 per width).

    Raises:
        ConfigError, UnknownNameError, CheckpointError, DataError, WidthError: one-line user errors.
    """
    from us3l.trainer.finetune import FinetuneConfig, get_finetune_recipe, run_finetune

    path = _checkpoint_arg(checkpoint, "finetune")
    if config is not None and recipe is not None:
        raise ConfigError("give a FinetuneConfig or a recipe name, not both")
    if config is None:
        name = recipe
        if name is None:
            from ..core.checkpoint import load_checkpoint

            data = overrides.get("dataset") or ((load_checkpoint(path).dataset or {}).get("name") or "digits")
            name = {"fashion-mnist": "fashion_mnist", "cifar10": "cifar", "cifar100": "cifar"}.get(data, "digits")
        config = FinetuneConfig(checkpoint=path, **get_finetune_recipe(name))
    cfg = config.replace(checkpoint=path, **overrides)
    with resolve_progress(progress, "fine-tuning") as report:
        out = run_finetune(cfg, report)
    results = tuple(WidthAccuracy(float(r["width"]), int(r["feature_dim"]), precision=r.get("precision", "fp32"),
                                  top1=r.get("top1"), source=r.get("source"), head=r.get("head")) for r in out.rows)
    return FinetuneResult(out.checkpoint, out.accuracy_path, out.checkpoint_hash, results, out.seconds, tuple(out.history),
                          tuple(out.notices))


def predict(artifact: PathLike, images: PathLike | Sequence[PathLike], *, top_k: int = 5,
            threads: int = 0, on_bad_image: str = "skip", width: float | None = None) -> PredictResult:
    """Classify image files with an exported classifier (``us3l export ... --outputs logits|probs``).

    Args:
        artifact: the ``.onnx`` (ONNX Runtime) or ``.engine`` (TensorRT, where it runs) file.
        images: an image file, a directory of images (searched recursively), or a list of them.
        top_k: classes reported per image.
        threads: CPU threads of ONNX Runtime (0: auto, one per CPU other processes leave idle).
        on_bad_image: ``skip`` (unreadable files are listed in ``skipped``, the rest classified) or
            ``fail`` (the first unreadable file is a :class:`DataError`).
        width: the width to run a switchable file (``export(..., switchable=True)``) at; required
            for one, and a width it holds.

    Raises:
        ConfigError, DataError, BackendUnavailableError: one-line user errors.
    """
    from us3l.core.preprocess import image_files
    from us3l.core.threads import check_threads
    from us3l.exporters.predict import predict_images

    check_threads(threads)
    targets = [images] if isinstance(images, (str, os.PathLike)) else list(images)
    files: list[Path] = []
    shown: dict[str, str] = {}
    for item in targets:
        found = image_files(item)
        files += found
        for f in found:
            single_dir = len(targets) == 1 and Path(item).is_dir()
            shown[str(f)] = f.relative_to(item).as_posix() if single_dir else str(f)
    info, records, skipped = predict_images(artifact, files, top_k, on_bad_image=on_bad_image, threads=threads,
                                            width=width)
    preds = tuple(Prediction(Path(r["image"]), tuple(ClassScore(t["index"], t["name"], t["prob"]) for t in r["top"]),
                             tuple(r["logits"]) if "logits" in r else None, shown.get(r["image"], r["image"]))
                  for r in records)
    bad = tuple(SkippedImage(Path(s["image"]), s["reason"], shown.get(s["image"], s["image"])) for s in skipped)
    return PredictResult(Path(artifact), info["outputs"], info.get("width"), preds, bad)


def pack(checkpoint: PathLike, out: PathLike | None = None, *, reseal: bool = False,
         license: str | None = None) -> PackResult:
    """Write a checkpoint as a shareable model directory: ``model.safetensors``, ``config.json``
    (timm's Hub layout) and a ``README.md`` model card (:mod:`us3l.core.modelfile`).

    Keeps the backbone, BN bank, classifier head, class names, normalisation and provenance (no
    absolute path of this machine); drops the optimiser, EMA and resume state. ``accuracy.json``
    beside the checkpoint is copied along (and tabulated in the card) when it describes these
    weights. ``out`` defaults to ``model/`` beside the checkpoint file.

    Args:
        reseal: ``checkpoint`` is a model directory whose weights were re-saved or edited on
            purpose: check every tensor's name, shape and dtype against its ``config.json`` and
            record the new hash (nothing else is written).
        license: the card's license (default ``apache-2.0``).

    Raises:
        CheckpointError: unreadable checkpoint, unwritable ``out``, or (``reseal``) weights that do
            not match ``config.json``.
    """
    import json
    import shutil

    from ..core.checkpoint import load_checkpoint
    from ..core.modelfile import ACCURACY_FILE, CARD_FILE, CONFIG_FILE, DEFAULT_LICENSE, WEIGHTS_FILE, card_license
    from ..core.modelfile import pack_checkpoint
    from ..core.modelfile import reseal as reseal_dir

    src = Path(checkpoint)
    if reseal:
        if out is not None:
            raise ConfigError("--reseal updates the model directory in place; drop --out")
        if not src.is_dir():
            raise ConfigError(f"--reseal takes a model directory (written by 'us3l pack'); {src} is not one")
        done = reseal_dir(src)
        sealed = tuple(src / f for f in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE))
        size = sum(f.stat().st_size for f in sealed[:2])
        return PackResult(src, sealed, size, size, done.new_content_hash, resealed=done)
    _checkpoint_arg(src, "pack")
    ckpt = load_checkpoint(src)
    if out is None:
        if src.is_dir():
            raise ConfigError(f"{src} is already a model directory; give --out for a copy")
        out = src.parent / "model"
    acc = (src if src.is_dir() else src.parent) / ACCURACY_FILE
    accuracy = None
    try:
        data = json.loads(acc.read_text(encoding="utf-8"))
        accuracy = data if isinstance(data, dict) and data.get("checkpoint") == ckpt.content_hash else None
    except (OSError, ValueError):
        pass
    if license is None:
        license = card_license(src) if src.is_dir() else DEFAULT_LICENSE
    directory = pack_checkpoint(ckpt, out, source=src, accuracy=accuracy, license=license)
    files = [directory / WEIGHTS_FILE, directory / CONFIG_FILE, directory / CARD_FILE]
    if accuracy is not None and acc.resolve() != (directory / ACCURACY_FILE).resolve():
        shutil.copyfile(acc, directory / ACCURACY_FILE)
        files.append(directory / ACCURACY_FILE)
    source_bytes = sum(f.stat().st_size for f in src.iterdir() if f.is_file()) if src.is_dir() else src.stat().st_size
    return PackResult(directory, tuple(files), sum(f.stat().st_size for f in files[:2]), source_bytes, ckpt.content_hash)
