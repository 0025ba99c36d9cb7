"""The streaming input pipeline: image files decoded and cropped in worker processes, batch by batch.

Image folders and file lists (``--data imagefolder``, layouts in :mod:`us3l.core.images`) are never
loaded whole. Memory is bounded by batch size x workers x prefetch, not by the dataset:

- **Training** (:class:`TrainStream`): worker processes (``--workers``) open each file, draw two
  RandomResizedCrop boxes on the *full* image (scale ``(crop_scale_min, 1)``, aspect ``(3/4, 4/3)``,
  docs/method.md §12.2) and a horizontal flip per view, decode (a JPEG at 1/2, 1/4 or 1/8 scale via
  Pillow's draft mode when both crops still cover the output size), and return two ``uint8`` views
  at the training size. The photometric part (colour jitter, grayscale, blur, solarize,
  normalisation) stays batched with kornia on the training device
  (:class:`~us3l.trainer.augment.SSLAugment` with ``geometric=False``).
- **Randomness:** each image's crops are drawn from a generator seeded by ``(seed, epoch, index)``,
  so a run does not depend on the number of workers, and a resumed run (at an epoch boundary)
  draws the same crops as an uninterrupted one. The sampler (:class:`EpochSampler`, a
  ``DistributedSampler`` with ``set_epoch``) gives each ``torchrun`` rank a disjoint shard of one
  permutation per epoch; workers are seeded per ``(seed, rank, worker)``.
- **Loading:** pinned memory on CUDA, persistent workers, ``prefetch`` batches per worker.
- **Bad files:** a file that cannot be used travels as a marker; the trainer counts and skips it
  with a warning (``on_bad_image="skip"``) or stops with one line (``"fail"``), see
  :class:`BadImages`.
- **Fine-tuning** (:class:`TaskFiles` through the same :class:`TrainStream`): one random resized
  crop of the full image and a flip per labelled file (or the centre view), drawn the same way.
- **Evaluation** (:class:`EvalStream`): the centre view (shorter side to the size, centre crop) of
  one split, batch by batch, for BN calibration, kNN and the linear probe. In-memory datasets
  (digits, Fashion-MNIST, CIFAR) are wrapped in the same interface.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from us3l.core.data import DatasetSpec, dataset_stats, default_image_size, load_split, num_classes, resize_images
from us3l.core.errors import DataError
from us3l.core.images import BAD_IMAGE_POLICIES, MAX_PIXELS, BadImageError, ImageList, SourceImage, list_split, \
    load_center

log = logging.getLogger(__name__)

RATIO = (3 / 4, 4 / 3)
MAX_DEFAULT_WORKERS = 14
STREAMED = ("imagefolder",)  # datasets read from files; the others are small and live in memory


def is_streamed(spec: DatasetSpec) -> bool:
    """Whether ``spec`` is read from image files by worker processes (else held in memory)."""
    return spec.name in STREAMED


def default_workers() -> int:
    """Loader processes when ``--workers`` is not given: one per CPU this process may use, less one
    for the training loop, at most :data:`MAX_DEFAULT_WORKERS` (0 on a single CPU: decode in-process)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cpus - 1))


def resolve_workers(workers: int | None) -> int:
    return default_workers() if workers is None else int(workers)


# --------------------------------------------------------------------------- geometry


def crop_box(width: int, height: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int]:
    """A RandomResizedCrop box ``(left, top, w, h)`` on a ``width x height`` image.

    Area fraction uniform in ``scale``, log aspect ratio uniform in ``log(ratio)``; ten tries, then the
    largest centred box whose aspect lies in ``ratio`` (the usual definition of the transform).
    """
    area = width * height
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, w, h
    own = width / height
    if own < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif own > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


@functools.lru_cache(maxsize=1)
def fast_backend() -> tuple[Any, Any] | None:
    """``(simplejpeg, cv2)`` when both are installed (``pip install 'us3l-deploy[fast-decode]'``) and
    ``US3L_DECODER`` is not ``pillow``; else None (Pillow decodes and resizes)."""
    if os.environ.get("US3L_DECODER", "auto").lower() == "pillow":
        return None
    try:
        import cv2
        import simplejpeg
    except ImportError:
        return None
    cv2.setNumThreads(1)
    return simplejpeg, cv2


def decoder_name() -> str:
    return "simplejpeg+opencv" if fast_backend() is not None else "pillow"


def _fast_views(path: str, size: int, scale: tuple[float, float], rng: np.random.Generator,
                views: int) -> np.ndarray | None:
    """The JPEG path with libjpeg-turbo's DCT scaling (simplejpeg) and OpenCV's bilinear resize; None
    when the file is no plain JPEG this path reads (Pillow then decides: other formats, CMYK, errors)."""
    backend = fast_backend()
    if backend is None or not path.lower().endswith((".jpg", ".jpeg")):
        return None
    simplejpeg, cv2 = backend
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except (OSError, ValueError):
        return None
    if _rotated_jpeg(data):  # simplejpeg ignores EXIF orientation: the one decoder (Pillow) applies it
        return None
    if colorspace.lower() not in ("ycbcr", "rgb", "gray") or width * height > MAX_PIXELS or min(width, height) < 1:
        return None
    state = rng.bit_generator.state
    boxes = [crop_box(width, height, scale, rng) for _ in range(views)]
    flips = [bool(rng.random() < 0.5) for _ in range(views)]
    shrink = min(min(w, h) for _, _, w, h in boxes) / size
    try:
        img = simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=int(math.ceil(width / max(shrink, 1))),
                                     min_height=int(math.ceil(height / max(shrink, 1))))
    except ValueError:  # truncated or corrupt: Pillow's path reports it the same way as for other files
        rng.bit_generator.state = state
        return None
    sy, sx = img.shape[0] / height, img.shape[1] / width
    out = np.empty((views, size, size, 3), dtype=np.uint8)
    for v, ((left, top, w, h), flip) in enumerate(zip(boxes, flips)):
        x0, y0 = int(left * sx), int(top * sy)
        x1, y1 = max(x0 + 1, int(round((left + w) * sx))), max(y0 + 1, int(round((top + h) * sy)))
        view = cv2.resize(img[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
        out[v] = view[:, ::-1] if flip else view
    return out


def _rotated_jpeg(data: bytes) -> bool:
    """Whether a JPEG's EXIF block (within its first 64 KiB) sets an orientation other than 1."""
    head = data[:65536]
    if b"Exif\x00\x00" not in head:
        return False
    import io

    from PIL import Image

    from us3l.core.images import exif_orientation

    try:
        with Image.open(io.BytesIO(data)) as img:
            return exif_orientation(img) != 1
    except Exception:  # Pillow's path decides (and reports) what is wrong with the file
        return True


def crop_views(path: str, size: int, scale: tuple[float, float], rng: np.random.Generator,
               views: int = 2) -> np.ndarray:
    """``views`` random resized crops (+ flips) of the full image at ``path``: ``(views, size, size, 3)`` uint8.

    Two decoders draw the same boxes: Pillow (draft mode, antialiased bilinear resize), or, when the
    ``fast`` extra is installed, simplejpeg (DCT scaling) + OpenCV (bilinear) for JPEG files, measured
    ~2.5x faster per worker (``perf/data_pipeline.py``). Pixels differ slightly between the two.

    Raises:
        BadImageError: unreadable, truncated or decompression-bomb file.
    """
    from PIL import Image

    fast = _fast_views(path, size, scale, rng, views)
    if fast is not None:
        return fast
    with SourceImage(path) as src:  # the one decoder (us3l.core.images): orientation, alpha, bit depth, ...
        width, height = src.size
        boxes = [crop_box(width, height, scale, rng) for _ in range(views)]
        flips = [bool(rng.random() < 0.5) for _ in range(views)]
        # the decoded image may shrink by f while every crop keeps >= size pixels on each side
        shrink = min(min(w, h) for _, _, w, h in boxes) / size
        img = src.decode("rgb", shrink)
        sx, sy = img.size[0] / width, img.size[1] / height
        out = np.empty((views, size, size, 3), dtype=np.uint8)
        try:
            for v, ((left, top, w, h), flip) in enumerate(zip(boxes, flips)):
                box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
                view = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
                if flip:
                    view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                out[v] = np.asarray(view, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise BadImageError(path, f"{type(exc).__name__}: {exc}") from None
    return out


# --------------------------------------------------------------------------- datasets


class TwoViewFiles(Dataset):
    """Items keyed ``(index, epoch)``: two crops of file ``index``, drawn from ``(seed, epoch, index)``.

    Returns ``(views uint8 (2, S, S, 3) | None, index, reason | None)``; a bad file is a marker, not an
    exception, so that one file cannot kill a worker.
    """

    def __init__(self, paths: Sequence[str], size: int, scale: tuple[float, float], seed: int) -> None:
        self.paths, self.size, self.scale, self.seed = list(paths), int(size), tuple(scale), int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray | None, int, str | None]:
        index, epoch = key
        rng = np.random.default_rng((self.seed, epoch, index))
        try:
            return crop_views(self.paths[index], self.size, self.scale, rng), index, None  # type: ignore[arg-type]
        except BadImageError as exc:
            return None, index, exc.reason


class TaskFiles(Dataset):
    """Fine-tuning items keyed ``(index, epoch)``: one view of file ``index`` for a labelled batch.

    ``mode="crop"``: a RandomResizedCrop of the *full* image (area fraction in ``scale``, aspect in
    ``(3/4, 4/3)``) and a horizontal flip, drawn from ``(seed, epoch, index)`` like
    :class:`TwoViewFiles`; ``mode="center"``: the evaluation view (no randomness). Returns
    ``(view uint8 (S, S, 3) | None, index, reason | None)``; the label is looked up by index in the
    training process.
    """

    MODES = ("crop", "center")

    def __init__(self, paths: Sequence[str], size: int, scale: tuple[float, float], seed: int,
                 mode: str = "crop") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode {mode!r}; valid: {', '.join(self.MODES)}")
        self.paths, self.size, self.scale, self.seed, self.mode = list(paths), int(size), tuple(scale), int(seed), mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, int]) -> tuple[np.ndarray | None, int, str | None]:
        index, epoch = key
        try:
            if self.mode == "center":
                return load_center(self.paths[index], self.size), index, None
            rng = np.random.default_rng((self.seed, epoch, index))
            return crop_views(self.paths[index], self.size, self.scale, rng, views=1)[0], index, None  # type: ignore[arg-type]
        except BadImageError as exc:
            return None, index, exc.reason


class CenterFiles(Dataset):
    """Evaluation items: ``(centre view uint8 (S, S, 3) | None, label, reason | None)``."""

    def __init__(self, files: ImageList, size: int) -> None:
        self.files, self.size = files, int(size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray | None, int, str | None]:
        path = self.files.paths[index]
        try:
            return load_center(path, self.size), int(self.files.labels[index]), None
        except BadImageError as exc:
            return None, index, exc.reason


def collate_marked(items: list[tuple[Any, int, str | None]]) -> dict[str, Any]:
    """Stack the good items (``images``: uint8, ``ids``: int64) and list the bad ones (``bad``)."""
    good = [(x, i) for x, i, reason in items if reason is None]
    bad = [(i, reason) for x, i, reason in items if reason is not None]
    if good:
        images = torch.from_numpy(np.stack([x for x, _ in good]))
    else:
        images = torch.empty((0,), dtype=torch.uint8)
    return {"images": images, "ids": torch.tensor([i for _, i in good], dtype=torch.int64), "bad": bad}


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` whose keys carry the epoch: yields ``(index, epoch)``.

    One permutation of ``range(n)`` per ``(seed, epoch)`` (identical on every rank), cut to a multiple
    of ``world`` and dealt to the ranks (disjoint shards); ``limit`` keeps only the first keys of
    this rank's shard (``max_steps_per_epoch`` x batch).
    """

    def __init__(self, n: int, world: int, rank: int, seed: int, limit: int | None = None) -> None:
        # the sampler reads only len() of its data source
        super().__init__(range(n), num_replicas=world, rank=rank, shuffle=True,  # type: ignore[arg-type]
                         seed=seed, drop_last=True)
        self.limit = limit

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        keys = list(super().__iter__())
        if self.limit is not None:
            keys = keys[: self.limit]
        return iter([(int(i), self.epoch) for i in keys])

    def __len__(self) -> int:
        n = super().__len__()
        return n if self.limit is None else min(n, self.limit)


def _seed_worker(seed: int, rank: int, worker_id: int) -> None:
    """Seed a loader process from (seed, rank, worker): libraries that draw randomly stay reproducible."""
    s = (seed * 1_000_003 + rank * 1009 + worker_id) % (2**31)
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)
    torch.set_num_threads(1)  # decoding is single-threaded per process; no oversubscription


def make_loader(dataset: Dataset, batch: int, sampler: Any, workers: int, prefetch: int, pin: bool,
                seed: int, rank: int, drop_last: bool = False) -> DataLoader:
    """A DataLoader with the pipeline's settings (persistent workers, prefetch, pinning, seeding)."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {"persistent_workers": True, "prefetch_factor": max(1, int(prefetch)),
                 "worker_init_fn": functools.partial(_seed_worker, seed, rank)}
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=collate_marked,
                      pin_memory=pin, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed * 7 + rank), **extra)


class BadImages:
    """Counts bad files and applies the policy: ``skip`` (warn, go on) or ``fail`` (one error line)."""

    def __init__(self, policy: str, source: str, warn_first: int = 5) -> None:
        if policy not in BAD_IMAGE_POLICIES:
            raise DataError(f"on_bad_image {policy!r} is invalid; valid: {', '.join(BAD_IMAGE_POLICIES)}")
        self.policy, self.source, self.warn_first = policy, source, warn_first
        self.seen: set[int] = set()

    @property
    def count(self) -> int:
        """Distinct bad files met so far."""
        return len(self.seen)

    def record(self, bad: list[tuple[int, str]], describe: Any = None) -> None:
        for index, reason in bad:
            what = describe(index) if describe else str(index)
            if self.policy == "fail":
                raise DataError(f"bad image {what}: {reason}; rerun with --on-bad-image skip to skip such files")
            if index in self.seen:
                continue
            self.seen.add(index)
            if self.count <= self.warn_first:
                log.warning("skipping bad image %s: %s", what, reason)
            elif self.count == self.warn_first + 1:
                log.warning("more bad images in %s; skipping them quietly (count in metrics.jsonl)", self.source)


class TrainStream:
    """Batches of two uint8 views for one rank, epoch by epoch (see the module docstring)."""

    def __init__(self, files: ImageList, size: int, scale: tuple[float, float], seed: int, rank: int, world: int,
                 batch: int, steps: int, drop_last: bool, workers: int, prefetch: int, pin: bool,
                 dataset: Dataset | None = None) -> None:
        """``dataset``: items keyed ``(index, epoch)`` (default :class:`TwoViewFiles`; fine-tuning
        passes :class:`TaskFiles`)."""
        self.files, self.batch = files, batch
        self.sampler = EpochSampler(len(files), world, rank, seed, limit=steps * batch)
        items = dataset if dataset is not None else TwoViewFiles(files.paths, size, scale, seed)
        self.loader = make_loader(items, batch, self.sampler, workers, prefetch, pin, seed, rank, drop_last=drop_last)

    def epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        self.sampler.set_epoch(epoch)
        return iter(self.loader)

    def describe(self, index: int) -> str:
        return self.files.paths[index]


def views_on_device(batch: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The two views of a :class:`TrainStream` batch as float ``(N, 3, S, S)`` in [0, 1] on ``device``."""
    x = batch["images"].to(device, non_blocking=True)  # (N, 2, S, S, 3) uint8
    x = x.permute(1, 0, 4, 2, 3).float().div_(255.0)
    return x[0], x[1]


# --------------------------------------------------------------------------- evaluation


class EvalStream:
    """One split as re-iterable batches ``(x, y)``: normalised float ``(B, 3, S, S)`` and int64 labels.

    Files are decoded by ``workers`` processes (centre view); in-memory datasets are sliced and
    resized per batch. ``subset(indices)`` gives a stream of those items only (BN calibration).
    """

    def __init__(self, spec: DatasetSpec, split: str, batch_size: int = 256, workers: int | None = 0,
                 indices: torch.Tensor | None = None, on_bad_image: str = "skip") -> None:
        self.spec, self.split, self.batch_size = spec, split, int(batch_size)
        self.workers = resolve_workers(workers)
        self.size = default_image_size(spec)
        self.indices = indices
        self.on_bad_image = on_bad_image
        self.bad_count = 0
        mean, std = dataset_stats(spec)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        if is_streamed(spec):
            self.files: ImageList | None = list_split(_root(spec), split)
            self.x = self.y = None
            n = len(self.files)
        else:
            self.files = None
            self.x, self.y = load_split(spec, split, resize=False)
            n = len(self.x)
        self.n_all = n

    def __len__(self) -> int:
        return self.n_all if self.indices is None else len(self.indices)

    @property
    def labelled(self) -> bool:
        return self.files.labelled if self.files is not None else True

    def subset(self, indices: torch.Tensor) -> EvalStream:
        other = object.__new__(EvalStream)
        other.__dict__.update(self.__dict__)
        other.indices = indices if self.indices is None else self.indices[indices]
        return other

    def images(self) -> _Images:
        """A re-iterable of the image batches alone (what BN calibration takes)."""
        return _Images(self)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.files is None:
            assert self.x is not None and self.y is not None
            order = torch.arange(self.n_all) if self.indices is None else self.indices
            for i in range(0, len(order), self.batch_size):
                idx = order[i:i + self.batch_size]
                yield resize_images(self.x[idx], self.size), self.y[idx]
            return
        from torch.utils.data import Subset

        dataset: Dataset = CenterFiles(self.files, self.size)
        if self.indices is not None:
            dataset = Subset(dataset, self.indices.tolist())
        workers = min(self.workers, max(0, (len(self) + self.batch_size - 1) // self.batch_size))
        loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate_marked, prefetch_factor=2 if workers else None,
                            pin_memory=False)
        bad = BadImages(self.on_bad_image, self.files.source)
        for batch in loader:
            bad.record(batch["bad"], describe=self.files.paths.__getitem__)
            if len(batch["images"]) == 0:
                continue
            x = batch["images"].permute(0, 3, 1, 2).float().div_(255.0)
            yield (x - self.mean) / self.std, batch["ids"]
        self.bad_count = bad.count


class _Images:
    def __init__(self, stream: EvalStream) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return (len(self.stream) + self.stream.batch_size - 1) // self.stream.batch_size

    def __iter__(self) -> Iterator[torch.Tensor]:
        for x, _ in self.stream:
            yield x


def _root(spec: DatasetSpec) -> str:
    if not spec.root:
        raise DataError("dataset 'imagefolder' needs a data root (--data-root): a folder with train/<class>/*.jpg "
                        "(+ val/), a flat folder of images, or a file list train.csv|txt")
    return spec.root


def stream_num_classes(spec: DatasetSpec) -> int:
    """Classes of ``spec`` (image data: of the labelled training list)."""
    if is_streamed(spec):
        files = list_split(_root(spec), "train")
        if not files.labelled:
            raise DataError(f"{files.source} is unlabelled; kNN/linear evaluation needs labelled data "
                            "(train/<class>/ + val/<class>/ folders, or file lists with labels)")
        return len(files.classes)
    return num_classes(spec)


def held_out_batch(spec: DatasetSpec, n: int) -> torch.Tensor:
    """Up to ``n`` normalised centre views for the collapse check: the evaluation split when there is
    one, else the first training images (an unlabelled folder without ``val/``)."""
    try:
        stream = EvalStream(spec, "test", batch_size=n)
    except DataError as exc:
        if not is_streamed(spec):
            raise
        log.warning("%s; the collapse check uses training images", exc)
        stream = EvalStream(spec, "train", batch_size=n)
    stream = stream.subset(torch.arange(min(n, len(stream))))
    parts = [x for x, _ in stream]
    if not parts:
        raise DataError(f"no readable images for the collapse check in {spec.root}")
    return torch.cat(parts)[:n]
