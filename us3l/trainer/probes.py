"""Probes on frozen features: feature extraction at a width, weighted kNN and the linear probe.

- ``knn_accuracy``: weighted k-nearest-neighbour top-1 (cosine similarity, weights
  ``exp(sim / 0.07)``, the usual SSL kNN monitor), train split -> test split;
- ``linear_probe_accuracy``: a linear classifier trained with SGD on precomputed features; the
  ``"cifar"`` preset keeps docs/method.md §11's optimiser recipe (lr 30, momentum 0.9, wd 0,
  100 epochs, lr x0.1 at 60/80), ``"fast"`` suits small sets such as digits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from us3l.core.context import use_width
from us3l.core.data import resize_images
from us3l.core.errors import DataError, unknown_name
from us3l.core.heartbeat import stage
from us3l.core.width import DEFAULT_DIVISOR, format_width

KNN_TEMPERATURE = 0.07


@runtime_checkable
class EvalStreamLike(Protocol):
    """A re-iterable of ``(images, labels)`` batches whose ``len()`` is its number of images."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]: ...

    batch_size: int


@dataclass(frozen=True)
class LinearProbeConfig:
    """Optimiser recipe of the linear probe (trained on precomputed, frozen features).

    The default ("fast") suits small sets such as digits: lr 0.1, 60 epochs, lr x0.1 at epochs
    36/48 (the 60 %/80 % points of the schedule in docs/method.md §11), z-scored features.
    ``LINEAR_PRESETS["cifar"]`` is docs/method.md §11's CIFAR recipe.
    """

    epochs: int = 60
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 256
    milestones: tuple[int, ...] = (36, 48)
    gamma: float = 0.1
    standardize: bool = True
    seed: int = 0


LINEAR_PRESETS = {
    "fast": LinearProbeConfig(),
    "cifar": LinearProbeConfig(epochs=100, lr=30.0, batch_size=512, milestones=(60, 80), standardize=False),
}


def _linear_cfg(linear: LinearProbeConfig | str) -> LinearProbeConfig:
    if isinstance(linear, LinearProbeConfig):
        return linear
    if linear not in LINEAR_PRESETS:
        raise unknown_name("linear-probe preset", linear, list(LINEAR_PRESETS))
    return LINEAR_PRESETS[linear]


def _batches(x: Tensor, batch_size: int, size: int | None = None) -> "list[Tensor] | _Resized":
    """Views of ``batch_size`` images, resized to ``size`` when given (lazily, one batch at a time)."""
    if size is not None:
        return _Resized(x, batch_size, size)
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


class _Resized:
    """A re-iterable sequence of batches resized on access (keeps upsampled sets out of memory)."""

    def __init__(self, x: Tensor, batch_size: int, size: int) -> None:
        self.x, self.batch_size, self.size = x, batch_size, size

    def __len__(self) -> int:
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        for i in range(0, len(self.x), self.batch_size):
            yield resize_images(self.x[i:i + self.batch_size], self.size)


@torch.no_grad()
def extract_features(model: nn.Module, images: Tensor, width: float, batch_size: int = 256,
                     device: str | torch.device = "cpu", divisor: int = DEFAULT_DIVISOR,
                     size: int | None = None) -> Tensor:
    """Eval-mode backbone features of ``images`` at ``width``.

    Args:
        model: backbone (``num_classes=0``) with BN statistics calibrated for ``width``.
        images: normalised ``(N, 3, S, S)`` images.
        width / divisor: the width to run at and its channel divisor.
        batch_size / device: inference batching and device.
        size: resize each batch to this square size first (None: use the images as they are).

    Returns:
        ``(N, feature_dim(width))`` float32 features on the CPU.
    """
    model.eval()
    with use_width(model, width, divisor):
        out = [model(b.to(device, non_blocking=True)).float().cpu() for b in _batches(images, batch_size, size)]
    return torch.cat(out)


class RowBlock:
    """Rows (features) and labels gathered batch by batch into one block preallocated for ``total``
    rows (the stream's length), so that no long-lived small chunk sits between each batch's freed
    buffers: with a list of chunks glibc could not return the heap, and the peak memory of kNN
    evaluation grew with the split (perf/task_pipeline.py: 255 -> 407 MB for 2,000 -> 16,000 files,
    247 MB after malloc_trim; 271 -> 261 MB with the block). Without a known total (or past it),
    chunks are kept and concatenated."""

    def __init__(self, total: int | None) -> None:
        self.total, self.filled = total, 0
        self.block: Tensor | None = None
        self.block_y: Tensor | None = None
        self.rest: list[tuple[Tensor, Tensor]] = []

    def add(self, rows: Tensor, labels: Tensor) -> None:
        labels = torch.as_tensor(labels)
        if self.total is not None and self.filled + len(rows) <= self.total:
            if self.block is None or self.block_y is None:
                self.block = torch.empty((self.total, *rows.shape[1:]), dtype=rows.dtype)
                self.block_y = torch.empty(self.total, dtype=labels.dtype)
            self.block[self.filled:self.filled + len(rows)] = rows
            self.block_y[self.filled:self.filled + len(rows)] = labels
            self.filled += len(rows)
        else:
            self.rest.append((rows, labels))

    def result(self) -> tuple[Tensor, Tensor]:
        """``(rows, labels)`` in arrival order.

        Raises:
            DataError: nothing was added (no readable image).
        """
        parts = ([(self.block[:self.filled], self.block_y[:self.filled])]
                 if self.block is not None and self.block_y is not None and self.filled else []) + self.rest
        if not parts:
            raise DataError("no readable images to extract features from")
        if len(parts) == 1:
            return parts[0]
        return torch.cat([r for r, _ in parts]), torch.cat([y for _, y in parts])


@torch.no_grad()
def extract_stream(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], width: float,
                   device: str | torch.device = "cpu", divisor: int = DEFAULT_DIVISOR,
                   bank: bool = False) -> tuple[Tensor, Tensor]:
    """Eval-mode features of a stream of ``(images, labels)`` batches at ``width``, batch by batch.

    Args:
        bank: keep L2-normalised float16 features (a kNN bank at half the memory) instead of float32.

    Returns:
        ``(features, labels)`` on the CPU.
    """
    model.eval()
    total = len(batches) if isinstance(batches, EvalStreamLike) else None
    rows = RowBlock(total)
    with use_width(model, width, divisor), stage(f"features w{format_width(width)}", total=total,
                                                 unit="images") as progress:
        for x, y in batches:
            f = model(x.to(device, non_blocking=True)).float()
            rows.add((F.normalize(f, dim=1).half() if bank else f).cpu(), y)
            progress.advance(len(x))
    return rows.result()


# One similarity block is KNN_QUERY_CHUNK x KNN_BANK_CHUNK float32 (16 MiB): bounded whatever the
# bank's size. A 65,536-image chunk made the block, and so eval's peak memory, grow with the training
# split (1024 x 16,000 x 4 B = 62 MiB at 16,000 images; perf/task_pipeline.py ratio 1.41 for 16,000
# vs 2,000 files). The top-k merge per chunk costs little at 4,096.
KNN_QUERY_CHUNK = 1024
KNN_BANK_CHUNK = 4096


@torch.no_grad()
def knn_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20,
                 temperature: float = KNN_TEMPERATURE, n_classes: int | None = None) -> float:
    """Weighted kNN top-1 accuracy (the standard SSL kNN monitor; the reference has none, docs/method.md §11).

    Args:
        train_f / train_y: memory-bank features and labels.
        test_f / test_y: query features and labels.
        k: neighbours by cosine similarity; each votes ``exp(sim / temperature)`` for its label.
        temperature: vote sharpness (0.07).
        n_classes: number of classes (default: ``max(train_y) + 1``).

    Returns:
        Fraction of queries whose top-voted class is correct.
    """
    n_classes = int(n_classes or int(train_y.max()) + 1)
    # The bank is float16 (normalised; already so when it comes from extract_stream(bank=True)); the
    # similarity is computed in (query chunk x bank chunk) blocks and the top k merged block by block,
    # so no (queries x bank) matrix is ever held.
    if train_f.dtype == torch.float16:
        bank = train_f
    else:
        bank = torch.cat([F.normalize(train_f[i:i + KNN_BANK_CHUNK].float(), dim=1).half()
                          for i in range(0, len(train_f), KNN_BANK_CHUNK)])
    k = min(k, len(bank))
    correct = 0
    with stage("kNN", total=len(test_f), unit="queries") as progress:
        for start in range(0, len(test_f), KNN_QUERY_CHUNK):
            correct += _knn_chunk(test_f[start:start + KNN_QUERY_CHUNK], test_y[start:start + KNN_QUERY_CHUNK], bank,
                                  train_y, k, temperature, n_classes)
            progress.update(min(start + KNN_QUERY_CHUNK, len(test_f)))
    return correct / len(test_f)


def _knn_chunk(q: Tensor, q_y: Tensor, bank: Tensor, train_y: Tensor, k: int, temperature: float,
               n_classes: int) -> int:
    """Correct votes of one chunk of queries against the bank (in blocks of the bank, top k merged)."""
    q = F.normalize(q.float(), dim=1)
    best_s = torch.empty(len(q), 0)
    best_i = torch.empty(len(q), 0, dtype=torch.int64)
    for b in range(0, len(bank), KNN_BANK_CHUNK):
        s, i = (q @ bank[b:b + KNN_BANK_CHUNK].float().t()).topk(min(k, len(bank) - b), dim=1)
        best_s, pick = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), dim=1)
        best_i = torch.cat([best_i, i + b], 1).gather(1, pick)
    votes = torch.zeros(len(q), n_classes).scatter_add_(1, train_y[best_i], (best_s / temperature).exp())
    return int((votes.argmax(1) == q_y).sum())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run tiny CPU ops single-threaded: for a 10-way head on ~100-d features, thread hand-off
    costs more than the math (measured 17 ms vs 0.8 ms per SGD step on 2 busy cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def linear_probe_accuracy(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, n_classes: int,
                          cfg: LinearProbeConfig = LINEAR_PRESETS["fast"]) -> float:
    """Linear probe on frozen features (docs/method.md §11, on precomputed features).

    Args:
        train_f / train_y / test_f / test_y: features and labels of the two splits.
        n_classes: output size of the linear head.
        cfg: optimiser recipe (seeded; the global RNG is not used).

    Returns:
        Top-1 accuracy of the trained head on the test features.
    """
    return train_linear_probe(train_f, train_y, test_f, test_y, n_classes, cfg)[0]


def train_linear_probe(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, n_classes: int,
                       cfg: LinearProbeConfig = LINEAR_PRESETS["fast"]) -> tuple[float, Tensor, Tensor]:
    """:func:`linear_probe_accuracy` that also returns the head as ``(weight, bias)`` on the raw
    features: the standardisation is folded in (``W / std``, ``b - W @ (mean / std)``), so the head is
    a usable classifier of the backbone's features."""
    mean = std = None
    if cfg.standardize:
        mean, std = feature_scaler(train_f)
        train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    gen = torch.Generator().manual_seed(cfg.seed)
    head = nn.Linear(train_f.shape[1], n_classes)
    with torch.no_grad():  # nn.Linear's default init, drawn from our own generator (no global RNG use)
        bound = 1.0 / train_f.shape[1] ** 0.5
        head.weight.uniform_(-bound, bound, generator=gen)
        head.bias.uniform_(-bound, bound, generator=gen)
    opt = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
    with _one_thread(), stage("linear probe", total=cfg.epochs, unit="epochs") as progress:
        for epoch in range(cfg.epochs):
            for idx in _batches(torch.randperm(len(train_f), generator=gen), cfg.batch_size):
                loss = F.cross_entropy(head(train_f[idx]), train_y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            progress.update(epoch + 1)
        with torch.no_grad():
            acc = float((head(test_f).argmax(1) == test_y).float().mean())
            weight, bias = head.weight.detach().clone(), head.bias.detach().clone()
            if mean is not None and std is not None:
                weight, bias = fold_standardization(weight, bias, mean, std)
            return acc, weight, bias


def feature_scaler(features: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, std)`` of ``features`` (rows) per column, the z-scoring of the linear probe: the
    unbiased standard deviation, clamped at 1e-6."""
    return features.mean(0, keepdim=True), features.std(0, keepdim=True).clamp_min(1e-6)


def fold_standardization(weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """A linear layer on standardised inputs ``(x - mean) / std`` as one on the raw inputs ``x``:
    ``(W / std, b - (W / std) @ mean)``, the same logits (up to rounding).

    Args:
        weight / bias: ``(K, D)`` and ``(K,)``, trained on standardised inputs.
        mean / std: the inputs' per-column statistics, ``D`` values (any shape with ``D`` elements).
    """
    folded = weight / std.reshape(1, -1)
    return folded, bias - folded @ mean.reshape(-1)
