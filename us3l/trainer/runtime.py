"""Process-level plumbing of a training run: device, process group, data shards, RNG state.

Everything returned here is plain data so that it fits a ``weights_only`` checkpoint: RNG states
become tensors, lists and numbers (and back).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from us3l.core.errors import ConfigError, US3LError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process (``world == 1`` without ``torchrun``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # True when this run created the process group (and must destroy it)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available else CPU; ``"cuda"`` under DDP → ``cuda:<local_rank>``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available; valid here: cpu, auto")
        device = torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def launch_rank() -> int:
    """This process's rank as ``torchrun`` sets it (``RANK``; 0 without torchrun). Readable after the
    process group is gone, e.g. while a failed run cleans up."""
    return int(os.environ.get("RANK", "0"))


def init_distributed(device_name: str) -> DistInfo:
    """Join the ``torchrun`` process group from the environment (gloo on CPU, NCCL on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = launch_rank(), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(rank, world, local_rank, owns_group=False)
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.info("joined process group: rank %d of %d (%s)", rank, world, dist.get_backend())
    return DistInfo(rank, world, local_rank, owns_group=True)


def shard_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> torch.Tensor:
    """This rank's sample order for ``epoch`` (``DistributedSampler`` semantics, padding-free).

    One permutation per epoch from ``(seed, epoch)`` — identical on every rank and on resume —
    truncated to a multiple of ``world`` and strided by rank, so every rank gets the same count.
    """
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g)
    usable = (n // world) * world
    return perm[:usable][rank::world]


def lr_at(epoch: int, epochs: int, base: float, warmup_epochs: int = 0) -> float:
    """Per-epoch learning rate: optional linear warm-up, then ``base * (1 + cos(pi * e / E)) / 2``."""
    if epoch < warmup_epochs:
        return base * (epoch + 1) / warmup_epochs
    span = max(epochs - warmup_epochs, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / span))


def lr_at_iteration(progress: float, epochs: int, base: float, warmup_epochs: int = 0) -> float:
    """MoCo v3's per-iteration rate at fractional epoch ``progress`` (= epoch + step / steps).

    Linear warm-up ``base * progress / W`` for ``progress < W``, then
    ``base * (1 + cos(pi * (progress - W) / (E - W))) / 2``.
    """
    if progress < warmup_epochs:
        return base * progress / warmup_epochs
    span = max(epochs - warmup_epochs, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * (progress - warmup_epochs) / span))


def per_process_batch(batch_size: int, global_batch: bool, world: int) -> int:
    """Images per process: ``batch_size`` itself, or ``batch_size / world`` when it is the global batch.

    Raises:
        ConfigError: a global batch that the number of processes does not divide.
    """
    if not global_batch:
        return int(batch_size)
    if batch_size % world or batch_size // world < 2:
        raise ConfigError(f"global batch {batch_size} cannot be split evenly into >= 2 images on each of {world} "
                          f"process(es); use a global batch that is a multiple of {world} (and >= {2 * world})")
    return batch_size // world


class WidthMismatchError(US3LError):
    """Ranks drew different width lists (their width generators are out of step)."""


def check_width_agreement(info: DistInfo, digest: bytes, epoch: int) -> None:
    """Compare this epoch's width digest across ranks (one small collective; no-op on one process).

    Raises:
        WidthMismatchError: some rank drew different widths; its gradients would have been
            averaged with another width's, so training stops here.
    """
    if not info.distributed:
        return
    seen = gather_objects(info, digest.hex())
    if len(set(seen)) > 1:
        raise WidthMismatchError(
            f"ranks drew different width lists in epoch {epoch} (digests by rank: {', '.join(seen)}); every rank "
            "must seed the width generator with the same --seed and use it for nothing else")


def python_rng_state(rng: random.Random) -> dict:
    """``random.Random`` state as plain data."""
    version, internal, gauss = rng.getstate()
    return {"version": int(version), "internal": [int(v) for v in internal], "gauss": gauss}


def set_python_rng_state(rng: random.Random, state: dict) -> None:
    rng.setstate((int(state["version"]), tuple(int(v) for v in state["internal"]), state["gauss"]))


def global_rng_state() -> dict:
    """Torch CPU/CUDA, numpy and stdlib ``random`` global states as plain data."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # a dict only for a non-MT19937 generator; the global RandomState is MT19937
    kind, keys, pos, has_gauss, cached = legacy
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "random": _stdlib_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _stdlib_state() -> dict:
    version, internal, gauss = random.getstate()  # the module-level generator libraries may use
    return {"version": int(version), "internal": [int(v) for v in internal], "gauss": gauss}


def set_global_rng_state(state: dict) -> None:
    """Inverse of :func:`global_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached"]))
    rs = state["random"]
    random.setstate((int(rs["version"]), tuple(int(v) for v in rs["internal"]), rs["gauss"]))  # stdlib global
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block without disturbing the global RNG streams (torch CPU/CUDA, numpy, stdlib).

    A measurement inside a training run (the kNN learning curve: a data loader draws a seed)
    must not change the augmentation draws that follow it.
    """
    state = global_rng_state()
    try:
        yield
    finally:
        set_global_rng_state(state)


def gather_objects(info: DistInfo, mine: Any) -> list:
    """Every rank's ``mine`` (picklable), in rank order (collective under DDP)."""
    if not info.distributed:
        return [mine]
    out: list = [None] * info.world
    dist.all_gather_object(out, mine)
    return out


def gather_rng_states(info: DistInfo) -> list[dict]:
    """Every rank's global RNG state, in rank order (collective under DDP)."""
    return gather_objects(info, global_rng_state())


def seed_everything(seed: int) -> None:
    """Seed torch (CPU + CUDA), numpy and stdlib ``random`` (global generators used by libraries)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)
