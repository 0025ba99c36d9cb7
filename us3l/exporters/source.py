"""Where the network and its BN statistics come from, per export.

- :func:`load_network`: a checkpoint (``load_checkpoint`` + strict ``build_model``) or, with
  only ``arch``, an untrained network of that architecture (seeded, for latency planning).
- :class:`CalibrationSet`: real images for BN recalibration, the parity gate and INT8
  calibration: ``calib_data`` (an ``.npy``/``.pt`` NCHW array or a dataset ``name[:root]``), else
  the checkpoint's training data (``DatasetSpec.from_dict(ckpt.dataset)``); random images only for
  untrained networks.
- :func:`prepare_bn`: BN statistics at one width: the checkpoint's bank (also a bank width whose
  channel configuration is identical), else recalibration on real data, else a clear refusal.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from us3l.core.bn import calibrate_bn, load_bn_stats
from us3l.core.context import use_width
from us3l.core.errors import CheckpointError, ConfigError, DataError, ExportError
from us3l.core.width import format_width

if TYPE_CHECKING:
    from us3l.core.models import SlimmableNet

log = logging.getLogger(__name__)

RANDOM_IMAGES = 32  # random inputs used to give an untrained network BN statistics


@dataclass
class Network:
    """A slimmable network ready to export, with its provenance."""

    model: SlimmableNet
    arch: str
    arch_kwargs: dict[str, Any]
    source_hash: str
    source_path: str | None
    method: str
    untrained: bool
    checkpoint: Any = None  # us3l.core.checkpoint.Checkpoint | None

    @classmethod
    def of(cls, model: SlimmableNet, checkpoint: Any = None, path: str | os.PathLike | None = None,
           seed: int = 0) -> Network:
        """``model`` with its provenance: its checkpoint (and file), or untrained with ``seed``."""
        if checkpoint is not None:
            return cls(model, checkpoint.arch, dict(checkpoint.arch_kwargs), checkpoint.content_hash,
                       str(Path(path).resolve()) if path else None, checkpoint.method,
                       checkpoint.method == "untrained", checkpoint)
        arch = str(model.arch)
        return cls(model, arch, dict(model.arch_kwargs), f"untrained:{arch}:seed{seed}", None, "untrained", True)


def load_network(checkpoint: str | None, arch: str | None, seed: int = 0, input_size: int | None = None) -> Network:
    """Load ``checkpoint`` or build an untrained ``arch`` (at ``input_size`` when given).

    Raises:
        ConfigError: neither or conflicting ``checkpoint`` / ``arch``.
        CheckpointError: unreadable checkpoint or weights that do not fit its architecture.
    """
    if checkpoint:
        from us3l.core.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint)
        if arch and arch != ckpt.arch:
            raise ConfigError(f"--arch {arch} contradicts the checkpoint's architecture {ckpt.arch}; drop --arch")
        model = ckpt.build_model().eval()
        if input_size and int(input_size) != model.input_size:
            check_input_size(model, int(input_size))
        return Network.of(model, ckpt, checkpoint)
    if not arch:
        raise ConfigError("give a checkpoint or --arch NAME (an untrained network for latency planning)")
    from us3l.core.models import get_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model(arch, **({"input_size": int(input_size)} if input_size else {})).eval()
    return Network.of(model, seed=seed)


def check_input_size(model: SlimmableNet, size: int) -> None:
    """Refuse an input size the architecture cannot run (e.g. a ViT's fixed position embedding)."""
    try:
        with torch.no_grad(), use_width(model, model.width_range[0]):
            model(torch.zeros(1, model.in_chans, size, size))
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"input size {size} does not fit {model.arch} (built for {model.input_size} px): "
                          f"{str(exc).splitlines()[0][:120]}") from None


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of already validated NCHW images to ``size`` x ``size`` (float32, contiguous)."""
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.float().contiguous()


@dataclass
class CalibrationSet:
    """Lazily loaded calibration images (float32 NCHW, normalised like the training data)."""

    calib_data: str | None
    dataset: dict | None
    input_size: int
    in_chans: int
    untrained: bool
    seed: int = 0
    limit: int | None = None  # keep at most this many images (after the seeded shuffle)
    _cache: dict = field(default_factory=dict, repr=False)

    def describe(self) -> dict[str, Any]:
        """A JSON-like identity of the data (part of the cache key)."""
        if self.calib_data:
            p = Path(self.calib_data)
            if p.is_file():
                from us3l.core.files import sha256_file

                # by content, not by where it lies: the record travels with the artifact to devices
                return {"file": p.name, "sha256": sha256_file(p)}
            name, _, root = self.calib_data.partition(":")
            return {"dataset": f"{name}:{_portable_root(root)}" if root else name}
        if self.dataset:
            spec = dict(self.dataset)
            if spec.get("root"):
                spec["root"] = _portable_root(str(spec["root"]))
            return {"dataset": spec}
        return {"random": self.seed} if self.untrained else {}

    @property
    def available(self) -> bool:
        return bool(self.calib_data or self.dataset or self.untrained)

    @property
    def kind(self) -> str:
        return "real" if (self.calib_data or self.dataset) else "random"

    def normalization(self) -> dict[str, list[float]] | None:
        """Mean/std the images were normalised with (None when unknown)."""
        spec = self._spec()
        if spec is None:
            return None
        from us3l.core.data import dataset_stats

        mean, std = dataset_stats(spec)
        return {"mean": list(mean), "std": list(std)}

    def _spec(self) -> Any:
        from us3l.core.data import DatasetSpec

        if self.calib_data and not Path(self.calib_data).is_file():
            name, _, root = self.calib_data.partition(":")
            return DatasetSpec(name=name, root=root or None, image_size=self.input_size)
        if not self.calib_data and self.dataset:
            return DatasetSpec.from_dict(self.dataset)
        return None

    def images(self) -> torch.Tensor:
        """All calibration images in a fixed seeded order (random images when no data is configured:
        :func:`bn_plan` refuses to *recalibrate* a trained network on those).

        Raises:
            DataError: no data configured, unreadable file or malformed array.
        """
        if "x" in self._cache:
            return self._cache["x"]
        gen = torch.Generator().manual_seed(self.seed)
        if self.calib_data and Path(self.calib_data).is_file():
            x = _read_array(Path(self.calib_data))
            what = f"calibration data {self.calib_data}"
        elif self._spec() is not None:
            from us3l.core.data import load_split

            # native size; resize the subset only (image folders: decode a subset of the files)
            x, _ = load_split(self._spec(), "train", resize=False, max_images=self.limit)
            what = f"dataset {self._spec().name}"
        else:  # untrained networks, or parity inputs of a checkpoint whose bank covers the width
            x = torch.randn(RANDOM_IMAGES, self.in_chans, self.input_size, self.input_size, generator=gen)
            what = "random images"
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise DataError(f"{what} has shape {tuple(x.shape)}; valid: float images N x {self.in_chans} x H x W")
        if len(x) == 0:
            raise DataError(f"{what} holds no images")
        x = x[torch.randperm(len(x), generator=gen)[: self.limit]]
        x = _resize(x, self.input_size)
        self._cache["x"] = x
        return x


def _read_array(path: Path) -> torch.Tensor:
    try:
        if path.suffix == ".npy":
            return torch.from_numpy(np.load(path, allow_pickle=False)).float()
        if path.suffix in (".pt", ".pth"):
            data = torch.load(path, map_location="cpu", weights_only=True)
            data = data.get("images", data) if isinstance(data, dict) else data
            if isinstance(data, torch.Tensor):
                return data.float()
    except Exception as exc:  # numpy/torch raise many types for bad files
        raise DataError(f"calibration data {path} is unreadable ({type(exc).__name__}: {str(exc)[:100]})") from None
    raise DataError(f"calibration data {path} is not an N x C x H x W array; valid: .npy or .pt (tensor or {{'images': tensor}})")


def bank_entry(net: Network, width: float, divisor: int) -> tuple[str, dict] | None:
    """The checkpoint bank's statistics valid at ``width`` (:meth:`Checkpoint.bank_entry`), with the
    bank width as text; ``None`` for untrained networks and snapped (16/32) exports."""
    entry = net.checkpoint.bank_entry(net.model, width, divisor) if net.checkpoint is not None else None
    return (format_width(entry[0]), entry[1]) if entry is not None else None


def stats_digest(stats: dict) -> str:
    """Short sha256 of a BN statistics entry (part of the cache key)."""
    h = hashlib.sha256()
    for name in sorted(stats):
        for key in ("mean", "var"):
            h.update(name.encode())
            h.update(stats[name][key].detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


def bn_plan(net: Network, calib: CalibrationSet, width: float, divisor: int, bn_images: int) -> dict[str, Any]:
    """Decide where the BN statistics at ``width`` come from, without computing them.

    Raises:
        ExportError: no bank entry and no data to recalibrate on.
    """
    entry = bank_entry(net, width, divisor)
    if entry is not None:
        return {"source": "bank", "bank_width": entry[0], "digest": stats_digest(entry[1])}
    if not calib.available:
        bank = ", ".join(format_width(w) for w in net.checkpoint.bank_widths()) if net.checkpoint else ""
        raise ExportError(
            f"checkpoint has no BN statistics for width {format_width(width)} (bank: {bank or 'empty'}) and no "
            f"record of its training data; pass --calib-data (an .npy/.pt image array or a dataset name) to recalibrate"
        )
    n = RANDOM_IMAGES if calib.kind == "random" else bn_images
    return {"source": "recalibrated", "data": calib.describe(), "images": n}


def prepare_bn(net: Network, calib: CalibrationSet, width: float, divisor: int, plan: dict[str, Any],
               batch_size: int) -> None:
    """Put the planned BN statistics for ``width`` into ``net.model`` (in place)."""
    if plan["source"] == "bank":
        load_bn_stats(net.model, net.checkpoint.bn_stats_for(float(plan["bank_width"])), width, divisor)
        return
    x = calib.images()[: plan["images"]]
    plan["images"] = int(len(x))  # the sidecar records what was used (a small set has fewer than asked)
    log.info("Recalibrating BN at width %s on %d %s images", format_width(width), len(x), calib.kind)
    calibrate_bn(net.model, x.split(batch_size), width, divisor=divisor)
    net.model.eval()


def load_head(path: str | None, feature_dim: int, max_feature_dim: int) -> nn.Linear | None:
    """A linear-probe head from ``path`` (``{"weight": (K, D), "bias": (K,)}``, loaded weights_only).

    ``D`` is the sliced feature width; a head trained on the full width (``D = max_feature_dim``)
    is sliced to its first ``feature_dim`` input columns, as the slimmable ``fc`` would.

    Raises:
        CheckpointError: unreadable file or shapes that do not fit.
    """
    if not path:
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / foreign files
        raise CheckpointError(f"head {path} is unreadable ({type(exc).__name__}); valid: a .pt with weight and bias") from None
    data = data.get("state_dict", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise CheckpointError(f"head {path} is not a dict with 'weight' and 'bias'")
    data = {k.rsplit(".", 1)[-1]: v for k, v in data.items() if k.rsplit(".", 1)[-1] in ("weight", "bias")}
    w, b = data.get("weight"), data.get("bias")
    if w is None or w.ndim != 2 or (b is not None and b.shape != (w.shape[0],)):
        raise CheckpointError(f"head {path} needs 'weight' (K x D) and 'bias' (K,)")
    if w.shape[1] not in (feature_dim, max_feature_dim):
        raise CheckpointError(f"head {path} takes {w.shape[1]} features; width needs {feature_dim} (or {max_feature_dim})")
    head = nn.Linear(feature_dim, w.shape[0], bias=b is not None)
    with torch.no_grad():
        head.weight.copy_(w[:, :feature_dim])
        if b is not None:
            head.bias.copy_(b)
    return head.eval()


def _portable_root(root: str) -> str:
    """A data root as a sidecar records it: a relative root as given; an absolute one by its folder
    name and a short hash of the whole path (the record travels to devices and users, so it names no
    absolute path of this machine, yet two roots of the same name stay two cache keys)."""
    p = Path(root)
    if not p.is_absolute():
        return root
    import hashlib

    return f"{p.name}#{hashlib.sha256(str(p).encode()).hexdigest()[:12]}"
