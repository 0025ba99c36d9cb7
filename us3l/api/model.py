""":class:`SlimmableModel`: one loaded checkpoint (or untrained architecture) and everything a
user does with it in Python: list widths, calibrate BN at a width, run or slice a width, export
it, evaluate and benchmark it.

BN statistics (docs/method.md §10): training keeps none, so every width needs statistics before it
runs in eval mode. They come from the checkpoint's per-width bank (``us3l eval --store-bn`` or
:meth:`SlimmableModel.calibrate`), including a bank width that slices to the identical network.
Untrained architectures (latency planning) are calibrated on random images on demand.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import torch
from torch import nn

from ..core.bn import bn_stats, calibrate_bn, load_bn_stats
from ..core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..core.context import use_width
from ..core.data import DatasetSpec, load_split, resize_images
from ..core.errors import ConfigError, DataError
from ..core.slicing import slice_to_width
from ..core.width import DEFAULT_DIVISOR, default_widths, format_width, parse_widths

if TYPE_CHECKING:
    from us3l.exporters import ExportResult

    from .results import BenchResult, EvalResult, WidthInfo

#: What :meth:`SlimmableModel.calibrate` accepts as data: an ``N x C x H x W`` tensor, an iterable
#: of such batches (or of ``(images, labels)`` tuples, e.g. a ``DataLoader``), a dataset name
#: ``"cifar10:/data/cifar"``, or ``None`` for the checkpoint's own training data.
CalibrationData = Union[torch.Tensor, Iterable[Any], str, None]
PathLike = Union[str, "os.PathLike[str]"]

RANDOM_CALIBRATION_IMAGES = 32  # untrained networks: BN statistics from random inputs (latency is weight-free)


class SlimmableModel:
    """A universally slimmable network with its provenance.

    Build one with :func:`us3l.load` (a checkpoint) or :meth:`from_arch` (untrained).

    Attributes:
        network: the slimmable backbone (``nn.Module``, eval mode); run it at a width with
            :meth:`features` or ``with use_width(model.network, w): ...``.
        checkpoint: the loaded :class:`~us3l.core.checkpoint.Checkpoint` (``None`` when untrained).
        path: the checkpoint file (``None`` when untrained or not saved yet).

    Examples:
        >>> import us3l
        >>> m = us3l.SlimmableModel.from_arch("us_resnet_mini")
        >>> [w.stages for w in m.widths("0.25,1.0")]
        [[8, 8, 16, 32], [32, 32, 64, 128]]
        >>> plain = m.slice(0.5)               # nn.Conv2d / nn.BatchNorm2d / nn.Linear only
    """

    def __init__(self, network: nn.Module, checkpoint: Checkpoint | None = None, path: PathLike | None = None,
                 seed: int = 0) -> None:
        self.network = network.eval()
        self.checkpoint = checkpoint
        self.path = Path(path) if path is not None else None
        self.seed = seed
        self._snapped: dict[tuple[str, int], dict[str, dict[str, torch.Tensor]]] = {}  # (width, divisor) -> stats
        self._unsaved = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, path: PathLike) -> SlimmableModel:
        """Load a checkpoint written by ``us3l train`` / ``us3l import`` (no code from it is executed).

        Raises:
            CheckpointError: missing, corrupt, foreign or code-carrying file (one line).
        """
        ckpt = load_checkpoint(path)
        return cls(ckpt.build_model(), ckpt, path)

    @classmethod
    def from_arch(cls, arch: str, *, seed: int = 0, **arch_kwargs: Any) -> SlimmableModel:
        """An untrained network of a registered architecture (for latency planning and tests).

        Raises:
            UnknownNameError: ``arch`` is not registered (the message lists the valid names).
        """
        from ..core.models import get_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = get_model(arch, **arch_kwargs)
        return cls(network, None, None, seed)

    # ------------------------------------------------------------------ facts

    @property
    def arch(self) -> str:
        return str(getattr(self.network, "arch"))

    @property
    def width_range(self) -> tuple[float, float]:
        lo, hi = getattr(self.network, "width_range")
        return float(lo), float(hi)

    @property
    def input_size(self) -> int:
        return int(getattr(self.network, "input_size"))

    @property
    def in_chans(self) -> int:
        return int(getattr(self.network, "in_chans"))

    @property
    def untrained(self) -> bool:
        return self.checkpoint is None or self.checkpoint.method == "untrained"

    @property
    def has_bn(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.network.modules())

    def __repr__(self) -> str:
        src = str(self.path) if self.path else ("untrained" if self.checkpoint is None else "in memory")
        lo, hi = self.width_range
        return f"SlimmableModel({self.arch}, widths [{lo:g}, {hi:g}], {src})"

    def widths(self, widths: str | Sequence[float] | None = None, *, snap: int = DEFAULT_DIVISOR) -> list[WidthInfo]:
        """Channels, MACs, parameters and aliases per width (default: 0.25/0.5/0.75/1.0 within the range).

        Raises:
            WidthError: a width outside the model's range or malformed text.
        """
        from .commands import width_infos

        return width_infos(self.network, self._resolve(widths), snap)

    def calibrated_widths(self) -> list[float]:
        """Widths whose BN statistics are known (the checkpoint's bank, including unsaved calibrations)."""
        return self.checkpoint.bank_widths() if self.checkpoint is not None else []

    # ------------------------------------------------------------------ BN statistics

    def calibrate(self, width: float, data: CalibrationData = None, *, batches: int = 50, batch_size: int = 256,
                  snap: int = DEFAULT_DIVISOR, device: str | torch.device = "cpu") -> SlimmableModel:
        """Recalibrate BN at ``width`` (reset, then a cumulative average over ``batches`` batches).

        The statistics join the checkpoint's bank in memory (``snap`` 8) so :meth:`slice`,
        :meth:`features` and :meth:`export` use them; :meth:`save` writes them to the file.

        Args:
            width: the width to calibrate.
            data: training images: a tensor, an iterable of batches, a dataset name (``"digits"``,
                ``"cifar100:/data/c100"``) or ``None`` for the checkpoint's training data.
            batches / batch_size: how many batches of how many images (tensor and dataset data).
            snap: channel divisor (8 is the method's; 16/32 snapped networks get their own statistics).
            device: where to run the calibration passes.

        Returns:
            ``self`` (calls chain: ``model.calibrate(0.35).slice(0.35)``).

        Raises:
            DataError: no data given and none recorded, or an empty / malformed batch.
            WidthError: ``width`` outside the range.
        """
        width = self._one_width(width)
        if not self.has_bn:
            return self
        self.network.to(device)
        try:
            calibrate_bn(self.network, self._calibration_batches(data, batch_size), width, num_batches=batches,
                         device=device, divisor=snap)
        finally:
            self.network.to("cpu").eval()
        self._remember(width, snap, bn_stats(self.network, width, snap))
        return self

    def _remember(self, width: float, snap: int, stats: dict[str, dict[str, torch.Tensor]]) -> None:
        if snap == DEFAULT_DIVISOR and self.checkpoint is not None:
            self.checkpoint.add_bn_stats(width, stats)
            self._unsaved = True
        else:
            self._snapped[(format_width(width), snap)] = stats

    def _calibration_batches(self, data: CalibrationData, batch_size: int) -> Iterator[torch.Tensor]:
        size = self.input_size
        if data is None or isinstance(data, str):
            spec = self._dataset(data)
            from us3l.trainer.pipeline import EvalStream, is_streamed

            if is_streamed(spec):  # image files: decoded batch by batch (the one decoder), never held whole
                stream = EvalStream(spec, "train", batch_size, workers=0)
                order = torch.randperm(len(stream), generator=torch.Generator().manual_seed(self.seed))
                for batch_images, _ in stream.subset(order):
                    yield resize_images(batch_images, size)
                return
            images, _ = load_split(spec, "train", resize=False)
            if images.shape[1] == self.in_chans:
                order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
                for i in range(0, len(order), batch_size):  # batch by batch: no shuffled copy of the split
                    yield resize_images(images[order[i:i + batch_size]], size)
                return
            data = images  # refused below with the shape message
        if isinstance(data, torch.Tensor):
            if data.ndim != 4 or data.shape[1] != self.in_chans:
                raise DataError(f"calibration images have shape {tuple(data.shape)}; valid: N x {self.in_chans} x H x W")
            if len(data) == 0:
                raise DataError("calibration images hold no images")
            for i in range(0, len(data), batch_size):
                yield resize_images(data[i:i + batch_size].float(), size)
            return
        for batch in data:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor) or x.ndim != 4:
                raise DataError(f"calibration batches must be N x {self.in_chans} x H x W tensors or (images, labels) tuples")
            yield resize_images(x.float(), size)

    def _dataset(self, name: str | None) -> DatasetSpec:
        if name:
            ds, _, root = name.partition(":")
            return DatasetSpec(ds, root or None, self.input_size)
        if self.checkpoint is None or not self.checkpoint.dataset:
            raise DataError("no calibration data: pass images (a tensor or batches) or a dataset name such as 'digits'")
        return DatasetSpec.from_dict(self.checkpoint.dataset)

    def _load_stats(self, width: float, snap: int) -> None:
        """Put the known BN statistics for ``width`` into the network, or refuse with what to do."""
        if not self.has_bn:
            return
        stats = self._stats_for(width, snap)
        if stats is None and self.untrained:
            x = torch.randn(RANDOM_CALIBRATION_IMAGES, self.in_chans, self.input_size, self.input_size,
                            generator=torch.Generator().manual_seed(self.seed))
            self.calibrate(width, x, snap=snap)
            stats = self._stats_for(width, snap)
        if stats is None:
            bank = ", ".join(format_width(w) for w in self.calibrated_widths()) or "empty"
            raise ConfigError(f"no BN statistics for width {format_width(width)} (bank: {bank}); call "
                              f"model.calibrate({format_width(width)}) first (default data: the checkpoint's training set)")
        load_bn_stats(self.network, stats, width, snap)
        self.network.eval()

    def _stats_for(self, width: float, snap: int) -> dict[str, dict[str, torch.Tensor]] | None:
        if snap != DEFAULT_DIVISOR or self.checkpoint is None:
            return self._snapped.get((format_width(width), snap))
        entry = self.checkpoint.bank_entry(self.network, width, snap)
        return entry[1] if entry is not None else None

    # ------------------------------------------------------------------ running and slicing

    @torch.no_grad()
    def features(self, images: torch.Tensor, width: float, *, snap: int = DEFAULT_DIVISOR) -> torch.Tensor:
        """Eval-mode features of ``images`` (N x C x H x W, normalised like the training data) at ``width``."""
        width = self._one_width(width)
        self._load_stats(width, snap)
        with use_width(self.network, width, snap):
            return self.network(images.float())

    def slice(self, width: float, *, snap: int = DEFAULT_DIVISOR) -> nn.Module:
        """A plain ``nn.Module`` (standard conv/BN/linear layers with the rule's channel counts) equal to
        the slimmable network at ``width`` with that width's BN statistics; eval mode.

        Raises:
            ConfigError: no BN statistics for ``width`` yet (call :meth:`calibrate`).
            WidthError: ``width`` outside the range.
        """
        width = self._one_width(width)
        self._load_stats(width, snap)
        return slice_to_width(self.network, width, snap).eval()

    # ------------------------------------------------------------------ files and the other commands

    def save(self, path: PathLike | None = None) -> Path:
        """Write the checkpoint (with the BN bank, including calibrations made here) atomically.

        Raises:
            ConfigError: an untrained architecture has no checkpoint, or no path is known.
        """
        if self.checkpoint is None:
            raise ConfigError(f"an untrained {self.arch} has no checkpoint to save; train one with us3l.train")
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ConfigError("no path: call save(path)")
        save_checkpoint(self.checkpoint, target)
        self.path, self._unsaved = target, False
        return target

    def export(self, widths: str | float | Sequence[float] = 1.0, *, format: str = "onnx", out: PathLike = "exports",
               **options: Any) -> ExportResult:
        """Export widths (``0.35``, ``"0.25,0.5"``, ``"0.25:1.0:0.05"``) as verified artifacts.

        Uses this object's BN statistics (bank and unsaved calibrations), else recalibrates on the
        checkpoint's training data or ``calib_data``. ``options`` are
        :class:`us3l.exporters.ExportConfig` fields (``batch``, ``opset``, ``snap``, ``precision``, ...).
        """
        from .commands import export

        return export(self, widths, format=format, out=out, **options)

    def evaluate(self, widths: str | Sequence[float] | None = None, **options: Any) -> EvalResult:
        """BN-recalibrated kNN / linear accuracy per width (see :func:`us3l.evaluate`).

        Needs the checkpoint on disk (``accuracy.json`` is written beside it): :meth:`save` first.
        With ``store_bn=True`` the calibrated statistics also join this object's bank.
        """
        from .commands import evaluate

        result = evaluate(self._saved_path("evaluate"), widths, **options)
        if options.get("store_bn") and self.checkpoint is not None:
            self.checkpoint.bn_bank = load_checkpoint(result.checkpoint).bn_bank
        return result

    def bench(self, device: str = "cpu", *, widths: str | Sequence[float] | None = None, budget_ms: float | None = None,
              **options: Any) -> BenchResult:
        """Latency per width on ``device`` and the width for ``budget_ms`` (see :func:`us3l.bench`)."""
        from .commands import bench

        source: Any = self.arch if self.checkpoint is None else self._saved_path("bench")
        return bench(source, device=device, widths=widths, budget_ms=budget_ms, **options)

    def _saved_path(self, what: str) -> Path:
        if self.checkpoint is None:
            raise ConfigError(f"cannot {what} an untrained {self.arch}: it has no checkpoint")
        if self.path is None or self._unsaved:
            raise ConfigError(f"{what} reads the checkpoint file: call save(path) first (unsaved changes: "
                              f"{'yes' if self._unsaved else 'no file yet'})")
        return self.path

    # ------------------------------------------------------------------ helpers

    def _resolve(self, widths: str | Sequence[float] | None) -> list[float]:
        lo, hi = self.width_range
        if widths is None:
            return default_widths(lo, hi)
        return parse_widths(widths if isinstance(widths, str) else list(widths), lo, hi)

    def _one_width(self, width: float) -> float:
        values = self._resolve([float(width)])
        return values[0]


# ---------------------------------------------------------------------------- load and import


def load(checkpoint: PathLike) -> SlimmableModel:
    """Load a checkpoint as a :class:`~us3l.api.model.SlimmableModel`.

    Raises:
        CheckpointError: missing, corrupt, foreign or code-carrying file (one line).

    Examples:
        >>> model = load("runs/us3l/checkpoint.pt")            # doctest: +SKIP
        >>> model.calibrate(0.35).slice(0.35)                  # doctest: +SKIP
    """
    return SlimmableModel.load(checkpoint)


def import_reference(source: PathLike, out: PathLike, *, arch: str | None = None,
                     calibrated_width: float | None = None) -> SlimmableModel:
    """Convert a reference US3L checkpoint (``*.pth.tar``) into ours, save it at ``out`` and load it.

    Keeps the online encoder; drops the momentum encoder, projector and predictors. With
    ``calibrated_width`` the file's BN statistics enter the bank for that width unchanged.

    Raises:
        CheckpointError: unreadable file or keys that do not map (listed). ConfigError: unsupported arch.
    """
    from us3l.exporters import ImportConfig
    from us3l.exporters import import_reference as run_import

    ckpt = run_import(ImportConfig(source=str(source), out=str(out), arch=arch, calibrated_width=calibrated_width))
    return SlimmableModel(ckpt.build_model(), ckpt, out)
