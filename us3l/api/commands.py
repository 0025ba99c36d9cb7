"""The library calls behind the CLI: ``train``, ``evaluate``, ``widths``, ``export``, ``bench`` (and,
from :mod:`us3l.api.tasks`, ``finetune``, ``predict``, ``pack``). Each ``us3l`` command parses its
flags and calls exactly one of these; the CLI only renders the typed result (one code path).
``load`` and ``import_reference`` return a :class:`~us3l.api.model.SlimmableModel` and live beside
it in :mod:`us3l.api.model`, which calls these verbs; a model passed in here is taken by what it
has (:class:`InMemoryModel`), so the two modules do not import each other.

Every long function reports progress through ``progress``: a callback ``progress(done, total,
message)`` (``total`` is ``None`` while unknown), ``True`` for a rich bar on stderr, or ``None``.
They raise :class:`~us3l.core.errors.US3LError`
subclasses for bad input (the CLI prints those as one line with exit code 2). Heavy packages
(torch, the trainer, the exporters, the benchmarks) are imported inside the functions.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Union

from ..core.errors import CheckpointError, ConfigError
from .progress import ProgressArg, resolve_progress
from .results import BenchResult, EvalResult, TrainResult, WidthInfo

if TYPE_CHECKING:
    from torch import nn

    from us3l.exporters import ExportResult
    from us3l.trainer.config import TrainConfig

PathLike = Union[str, "os.PathLike[str]"]


class InMemoryModel(Protocol):
    """What the verbs use of a :class:`~us3l.api.model.SlimmableModel` given as a source."""

    network: nn.Module
    checkpoint: Any
    path: Path | None
    seed: int

    @property
    def arch(self) -> str: ...


Source = Union[PathLike, InMemoryModel]


def _width_text(widths: str | Sequence[float] | None) -> str | None:
    """Widths as the configs take them: list/range text (``None`` stays the command's default)."""
    return widths if widths is None or isinstance(widths, str) else ",".join(map(str, widths))


def _resolve_source(source: Source | None, arch: str | None) -> tuple[Path | None, str | None, Any]:
    """``(checkpoint path, arch name, in-memory model)`` from a path, an architecture name or a model.

    A string that names an existing file is a checkpoint; otherwise a registered architecture.
    Nothing here imports torch for a path or a name (a cached ``bench`` run never needs it).
    """
    model_module = sys.modules.get("us3l.api.model")  # a SlimmableModel exists only once it is imported
    if model_module is not None and isinstance(source, model_module.SlimmableModel):
        if arch is not None and arch != source.arch:
            raise ConfigError(f"arch {arch!r} contradicts the model's architecture {source.arch}")
        return source.path, (source.arch if source.checkpoint is None else None), source
    if source is None:
        if arch is None:
            raise ConfigError("give a checkpoint or an architecture name (--arch NAME, an untrained network for latency planning)")
        return None, arch, None
    if not isinstance(source, (str, os.PathLike)):
        raise ConfigError(f"source {source!r} is invalid; valid: a checkpoint path, an architecture name or a SlimmableModel")
    path = Path(source)
    if path.is_file() and path.suffix == ".onnx":  # a switchable file (export takes widths out, bench times it)
        from ..core.checks import check_onnx_file

        check_onnx_file(path)
        return path, arch, None
    if path.is_file() or (path / "config.json").is_file():  # a checkpoint file or a packed model directory
        from ..core.files import check_torch_file

        check_torch_file(path)  # a text file is said to be one before torch is even imported
        return path, arch, None
    from ..core.models import list_models

    if arch is None and str(source) in list_models():
        return None, str(source), None
    text = str(source)
    if arch is None and not any(c in text for c in "/\\.") and not path.exists():
        from ..core.errors import unknown_name

        raise unknown_name("architecture", text, list_models())
    raise CheckpointError(f"checkpoint {source} does not exist or is not a file (an architecture name is accepted "
                          f"too: {', '.join(list_models())})")


# ---------------------------------------------------------------------------- train


def train(config: TrainConfig | None = None, *, recipe: str | None = None, progress: ProgressArg = None,
          notify: Callable[[str], None] | None = None, **overrides: Any) -> TrainResult:
    """US3L self-supervised training of one universally slimmable checkpoint.

    Args:
        config: a full :class:`us3l.trainer.config.TrainConfig`; default: the ``recipe`` preset.
        recipe: preset name (``digits`` when neither is given; see ``us3l train --list-recipes``).
        progress: a callback ``progress(done, total, message)`` per training step, or ``True`` for a rich bar.
        notify: a callback for one-line notices before training: where a resumed run continues
            (``resuming runs/us3l/checkpoint.pt at epoch 4 of 13``) or that it is already complete.
        overrides: :class:`~us3l.trainer.config.TrainConfig` fields to change (``None`` values are
            ignored), e.g. ``epochs=2, out_dir="runs/demo"``.

    Returns:
        :class:`TrainResult` (checkpoint path, last-epoch losses, collapse scores, history).

    Raises:
        ConfigError / UnknownNameError: invalid options or recipe. DataError: missing data.
        TrainingError: a non-finite loss or (with ``fail_on_collapse``) a collapsed representation.
    """
    from us3l.trainer.loop import run_training
    from us3l.trainer.recipes import get_recipe

    if config is not None and recipe is not None:
        raise ConfigError("give a TrainConfig or a recipe name, not both")
    cfg = (config or get_recipe(recipe or "digits")).replace(**overrides)
    started = {"epoch": 0}

    def on_start(start_epoch: int, epochs: int) -> None:
        started["epoch"] = start_epoch
        if notify is None or not cfg.resume:
            return
        ckpt = Path(cfg.out_dir) / "checkpoint.pt"
        if start_epoch >= epochs:
            notify(f"{ckpt} is complete ({start_epoch} of {epochs} epochs); nothing to train")
        else:
            notify(f"resuming {ckpt} at epoch {start_epoch + 1} of {epochs}")

    with resolve_progress(progress, f"training {cfg.arch} on {cfg.data}") as report:
        path = run_training(cfg, report, on_start)
    return TrainResult.from_run(Path(path), started["epoch"])


# ---------------------------------------------------------------------------- evaluate


def evaluate(checkpoint: Source, widths: str | Sequence[float] | None = None, *, method: str | None = None,
             dataset: str | None = None, data_root: PathLike | None = None, image_size: int | None = None,
             calib_batches: int = 50, batch_size: int = 256, knn_k: int | None = None, linear_preset: str = "fast",
             store_bn: bool = False, device: str = "cpu", progress: ProgressArg = None,
             artifacts: Sequence[PathLike] = (), workers: int | None = None, out: PathLike | None = None,
             threads: int = 0) -> EvalResult:
    """Accuracy per width: BN recalibration on training images at each width, then kNN and/or a linear probe.

    Writes ``accuracy.json`` beside the checkpoint (the accuracy join of :func:`bench` reads it), or ``out``.

    Args:
        checkpoint: the checkpoint file (or a saved :class:`SlimmableModel`).
        widths: a list/range text or floats (default: 0.25/0.5/0.75/1.0 within the range).
        method: ``top1`` (a task checkpoint's classifier: the default for one), ``knn`` (the default
            otherwise), ``linear`` or ``both`` (the backbone's features).
        dataset / data_root / image_size: evaluation data (default: the checkpoint's training set).
        calib_batches / batch_size: BN recalibration batches and the inference batch size.
        knn_k: neighbours (default 20, or 200 on sets of 10 000+ images).
        linear_preset: ``fast`` or ``cifar`` (docs/method.md §11's recipe).
        store_bn: keep the calibrated statistics in the checkpoint's BN bank (rewrites the file atomically).
        device: torch device.
        artifacts: exported ONNX files (FP32/FP16/INT8; features, logits or probs) of this checkpoint to
            measure in ONNX Runtime instead of the PyTorch widths; each row records the file's sha256.
        workers: loader processes decoding image files (default: from the CPU count).
        out: the accuracy table to write (default: ``accuracy.json`` beside the checkpoint; ``bench``
            reads it from there, or from ``accuracy=``).
        threads: CPU threads (0: auto, one per CPU other processes leave idle; :mod:`us3l.core.threads`).

    Raises:
        CheckpointError, DataError, WidthError, ConfigError: one-line user errors.
    """
    from us3l.trainer.evaluate import EvalConfig, run_eval

    path, arch, model = _resolve_source(checkpoint, None)
    if model is not None:
        path = model._saved_path("evaluate")  # refuses untrained models and unsaved changes
    if path is None:
        raise ConfigError(f"evaluate needs a trained checkpoint file, not the untrained architecture {arch}")
    cfg = EvalConfig(checkpoint=str(path), widths=_width_text(widths), method=method, dataset=dataset,
                     data_root=str(data_root) if data_root is not None else None, image_size=image_size,
                     calib_batches=calib_batches, batch_size=batch_size, knn_k=knn_k, linear_preset=linear_preset,
                     store_bn=store_bn, device=device, artifacts=tuple(str(a) for a in artifacts), workers=workers,
                     out=str(out) if out is not None else None, threads=threads)
    done = 0
    with resolve_progress(progress, "evaluating") as report:

        def stage(width: float, what: str) -> None:
            nonlocal done
            from ..core.width import format_width

            done += what == "done"
            if report:
                report(done, None, f"width {format_width(width)}: {what}" if width else what)

        done_eval = run_eval(cfg, stage)
    result = EvalResult.from_rows(path, done_eval.checkpoint_hash, done_eval.accuracy_path, done_eval.protocol, done_eval.rows)
    if done_eval.classifier is not None:
        import dataclasses

        result = dataclasses.replace(result, classifier=done_eval.classifier)
    return result


# ---------------------------------------------------------------------------- widths


def width_infos(network: nn.Module, widths: Sequence[float], snap: int) -> list[WidthInfo]:
    """:class:`WidthInfo` rows for already validated ``widths`` of a slimmable ``network``."""
    from ..core.profile import profile_width
    from ..core.slicing import find_aliases, stage_channels

    aliases = find_aliases(network, list(widths), snap)
    rows = []
    for w in widths:
        prof = profile_width(network, w, snap)
        rows.append(WidthInfo(width=w, channels=dict(prof.channels), stages=stage_channels(prof.channels),
                              macs=int(prof.macs), params=int(prof.params), feature_dim=int(prof.feature_dim),
                              alias_of=aliases[w] if aliases[w] != w else None))
    return rows


def widths(source: Source, widths: str | Sequence[float] = "0.25:1.0:0.25", *, snap: int = 8,
           image_size: int | None = None) -> list[WidthInfo]:
    """Channels, MACs, parameters and aliases per width of an architecture or a checkpoint's network.

    Args:
        source: an architecture name (``us_resnet18_cifar``), a checkpoint file or a :class:`SlimmableModel`.
        widths: a list/range text or floats, validated against the network's range.
        snap: channel divisor (8 is the method's rule; 16/32 snap channels for hardware).
        image_size: input side in pixels for the MAC count (architectures only; default: the architecture's).

    Raises:
        UnknownNameError / ConfigError / WidthError: bad architecture, divisor or widths.

    Examples:
        >>> [(r.width, r.stages) for r in widths("us_resnet18_cifar", "0.35")]
        [(0.35, [24, 24, 48, 88, 176])]
    """
    from ..core.width import parse_widths

    from ..core.checks import check_number

    if snap < 1:
        raise ConfigError(f"snap must be a positive channel divisor, got {snap}; valid: 8, 16, 32")
    check_number("--image-size", image_size, minimum=4, integer=True)
    path, arch, model = _resolve_source(source, None)
    if model is not None:
        network = model.network
    elif path is not None:
        from ..core.checkpoint import load_checkpoint

        network = load_checkpoint(path).build_model()
    else:
        from ..core.models import get_model

        network = get_model(str(arch), **({"input_size": image_size} if image_size else {}))
    lo, hi = network.width_range
    values = parse_widths(widths if isinstance(widths, str) else list(widths), lo, hi)
    return width_infos(network, values, snap)


# ---------------------------------------------------------------------------- export


def export(source: Source | None, widths: str | float | Sequence[float] = 1.0, *, format: str = "onnx",
           out: PathLike = "exports", arch: str | None = None, progress: ProgressArg = None,
           **options: Any) -> ExportResult:
    """Slice widths, give them BN statistics, export them, verify each against PyTorch, write sidecars.

    Args:
        source: a checkpoint file, a :class:`SlimmableModel` (its in-memory BN bank is used) or an
            architecture name (untrained, for latency planning); ``None`` with ``arch=``.
        widths: ``0.35``, ``"0.25,0.5"``, a range ``"0.25:1.0:0.05"`` or floats (aliases export once).
        format: ``onnx``, ``trt`` (alias ``engine``) or ``pt2`` (torch.export).
        out: output directory (created only when every width passed its parity gate).
        options: other :class:`us3l.exporters.ExportConfig` fields: ``batch``, ``opset``, ``snap``,
            ``precision``, ``calib_data``, ``atol``, ``rtol``, ``include_head``, ``image_size``,
            ``name``, ``simplify``, ``force``, TensorRT build options.

    Returns:
        :class:`us3l.exporters.ExportResult` with one :class:`us3l.exporters.Artifact` per distinct network.

    Raises:
        WidthError, ConfigError, CheckpointError, DataError, ExportError, ParityError,
        BackendUnavailableError: one-line user errors; nothing is written then.
    """
    from us3l.exporters import ExportConfig
    from us3l.exporters import run_export

    path, arch_name, model = _resolve_source(source, arch)
    value = widths if isinstance(widths, (str, int, float)) else tuple(float(w) for w in widths)
    cfg = ExportConfig(checkpoint=str(path) if path is not None else None, arch=arch_name,
                       widths=value, format=format, out_dir=str(out), **options)
    network = None
    if model is not None:
        from us3l.exporters.source import Network

        network = Network.of(model.network, model.checkpoint, path, model.seed)
    with resolve_progress(progress, f"exporting {format}") as report:
        return run_export(cfg, report, network=network)


# ---------------------------------------------------------------------------- bench


def bench(source: Source | None = None, *, arch: str | None = None, device: str = "cpu",
          widths: str | Sequence[float] | None = None, budget_ms: float | None = None, metric: str = "p95",
          batches: Sequence[int] = (1,), out: PathLike | None = None, devices_file: PathLike | None = None,
          accuracy: PathLike | None = None, progress: ProgressArg = None, **options: Any) -> BenchResult:
    """Latency per width on a device, joined with accuracy, and the width chosen for a budget.

    Args:
        source: a checkpoint file (its ``accuracy.json`` is joined), a saved :class:`SlimmableModel`,
            an architecture name (untrained: latency planning; ``None`` with ``arch=``) or a switchable
            ``.onnx`` file (``export(..., switchable=True)``), measured at the widths it holds.
        device: ``cpu``, ``cuda``, ``jetson`` or a profile name from ``us3l-devices.toml``.
        widths: a list/range text or floats (default: the checkpoint's BN-bank widths, else 0.25:1.0:0.25).
        budget_ms / metric: choose the most accurate width whose ``metric`` (p50/p90/p95/p99/mean)
            latency is within the budget (the widest one without an accuracy table).
        batches: batch sizes to measure (the budget applies to the first).
        out: directory for ``report.json``, ``latency.csv``, ``latency.png`` and the lookup table
            (default ``./us3l-bench`` with the table in ``~/.cache/us3l``).
        devices_file / accuracy: explicit profiles file and accuracy table.
        options: other :class:`us3l.benchmarks.BenchConfig` fields: ``runner``, ``precision``, ``threads``,
            ``duration_s``, ``iterations``, ``warmup_ms``, ``rounds``, ``idle_gap_ms``, ``search``,
            ``power_modes``, ``accept_new_host_key``, ``force``, ``snap``, ``plot``, ``lut``,
            ``outputs`` (``features``/``logits``/``probs``; default logits for a task checkpoint) and
            ``measure_accuracy`` (evaluate each timed file without a row in the accuracy table).

    Raises:
        UnknownNameError, ConfigError, RemoteError, BackendUnavailableError, WidthError: one-line user errors.
    """
    from us3l.benchmarks import BenchConfig, run_bench

    path, arch_name, model = _resolve_source(source, arch)
    if model is not None and model.checkpoint is not None:
        path = model._saved_path("bench")
    artifact = None
    if path is not None and Path(path).suffix == ".onnx":  # a switchable file: measured at the widths it holds
        artifact, path = Path(path), None
    if options.get("power_modes") is not None:
        options["power_modes"] = tuple(int(m) for m in options["power_modes"])
    cfg = BenchConfig(checkpoint=path, arch=arch_name, artifact=artifact, device=device,
                      devices_file=Path(devices_file) if devices_file is not None else None, widths=_width_text(widths),
                      batches=tuple(int(b) for b in batches), budget_ms=budget_ms, metric=metric,
                      accuracy=Path(accuracy) if accuracy is not None else None,
                      out_dir=Path(out) if out is not None else None, **options)
    with resolve_progress(progress, f"measuring on {device}") as report:
        result = run_bench(cfg, progress=report, measure_accuracy=_measure_accuracy if cfg.measure_accuracy else None)
    return BenchResult.from_report(result.report, result.paths)


def _measure_accuracy(checkpoint: Path, files: list[Path], widths: list[float], table: Path) -> None:
    """``bench --measure-accuracy``: the evaluator (trainer room) measures the timed files (or, for
    the torch runner, the PyTorch widths) on the checkpoint's data and merges rows into ``table``."""
    from us3l.trainer.evaluate import EvalConfig, run_eval

    if files:
        run_eval(EvalConfig(checkpoint=str(checkpoint), artifacts=tuple(str(f) for f in files), out=str(table)))
    if widths:
        run_eval(EvalConfig(checkpoint=str(checkpoint), widths=",".join(repr(float(w)) for w in widths),
                            out=str(table)))


# ---------------------------------------------------------------------------- task models (us3l.api.tasks)

from .tasks import finetune, pack, predict  # noqa: E402  (one namespace: the CLI calls these through it)
