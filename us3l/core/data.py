"""Datasets as in-memory tensors: the embedded digits default, Fashion-MNIST, CIFAR-10/100 and image folders.

Every dataset is described by a frozen :class:`DatasetSpec` (stored in checkpoints so that BN
recalibration later uses the training data) and loaded whole with :func:`load_split` as float32
NCHW images (3 channels) and int64 labels. Decoded arrays are cached per process.

- ``digits`` — scikit-learn's bundled 8x8 digits (no download). Pixel values / 16, replicated to
  3 channels, resized bilinearly to ``image_size`` (default 16, the input size of
  ``us_resnet_mini``). Fixed split: stratified, ``random_state=0``, 1437 train / 360 test.
- ``fashion-mnist`` — the original IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``) in ``root``, by default
  :data:`FASHION_MNIST_ROOT` where Debian's ``apt-get install dataset-fashion-mnist`` puts them.
  60,000 train / 10,000 test images of 28x28 grayscale, 10 classes (:data:`FASHION_MNIST_CLASSES`);
  default size 28 (native). **Grayscale feeds the 3-channel stem by replicating the channel** (as
  digits): pixel / 255, then normalised with the single-channel train-split statistics
  (:data:`FASHION_MNIST_STATS`, mean 0.2860, std 0.3530, repeated for the 3 channels). So
  ``dataset_stats`` — what export calibration uses and what the artifact sidecar records under
  ``input.normalization`` — is one value per channel, identical across channels: a deployed model
  expects a grayscale image ``g`` in [0, 1] as ``(g - 0.2860) / 0.3530`` copied into all 3 channels.
  The split is returned as a channel-expanded view (one float per pixel in memory, 188 MB for the
  train split instead of 564 MB); indexing a batch gives an ordinary tensor, while writing in place
  into the whole split needs ``.contiguous()`` first. The IDX reader (:func:`read_idx`) is numpy-only
  and checks the header: magic, dtype code, dimensions, and that the sizes match the file length.
- ``cifar10`` / ``cifar100`` — a local folder in the standard python-pickle layout
  (``data_batch_1..5`` + ``test_batch``, or ``train`` + ``test``; the extracted
  ``cifar-10-batches-py`` / ``cifar-100-python`` sub-folder is found too). Unpickling is restricted
  to numpy arrays; anything else is refused.
- ``imagefolder`` — ``root/train/<class>/*.jpg`` and ``root/val`` (or ``root/test``), a flat folder
  (unlabelled) or a file list ``train.csv|txt`` (:mod:`us3l.core.images`); here shorter side resized
  then centre-cropped to ``image_size`` (default 224), bad files skipped with a warning. Training and
  evaluation do not use this whole-split load: they stream (``us3l.trainer.pipeline``).

Normalisation statistics: CIFAR per docs/method.md §12.2, ImageNet's for image folders, for digits
the per-channel mean/std of the training split at its image size, and for Fashion-MNIST the mean/std
of its full 60,000-image training split at the native 28 px (constants, so that a checkpoint can be
exported without the data, and a sliced copy of the data normalises like the full set).

Missing or malformed data raises :class:`~us3l.core.errors.DataError` with one line saying what
is wrong and which layout is expected.
"""

from __future__ import annotations

import functools
import gzip
import io
import os
import pickle
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataError, unknown_name

DATASETS = ("digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder")
_DEFAULT_SIZE = {"digits": 16, "fashion-mnist": 28, "cifar10": 32, "cifar100": 32, "imagefolder": 224}
_CIFAR_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
DIGITS_FILE = Path(__file__).with_name("assets") / "digits.npz"
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist package
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# mean / std of all 60,000 training images (pixel / 255) at 28 px; tests/trainer/test_fashion_mnist.py
# recomputes them from the installed files.
FASHION_MNIST_STATS = ((0.2860,) * 3, (0.3530,) * 3)
FASHION_MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@dataclass(frozen=True)
class DatasetSpec:
    """Which dataset, where, at which resolution.

    Args:
        name: one of :func:`list_datasets`.
        root: data folder (required for everything but ``digits`` and ``fashion-mnist``, whose
            default is :data:`FASHION_MNIST_ROOT`).
        image_size: square side in pixels; None = the dataset default.
    """

    name: str = "digits"
    root: str | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.name not in DATASETS:
            raise unknown_name("dataset", self.name, DATASETS)
        if self.image_size is not None and (not isinstance(self.image_size, int) or self.image_size < 1):
            raise DataError(f"image_size {self.image_size!r} is invalid; valid: a positive integer or None")

    def to_dict(self) -> dict[str, Any]:
        """JSON-like form (stored in checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> DatasetSpec:
        """Inverse of :meth:`to_dict`; None gives the default (digits)."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise DataError(f"dataset description {data!r} is not a dict with name/root/image_size")
        unknown = sorted(set(data) - {"name", "root", "image_size"})
        if unknown:
            raise DataError(f"dataset description has unknown field(s) {', '.join(unknown)}; valid: name, root, image_size")
        size = data.get("image_size")
        return cls(name=data.get("name", "digits"), root=data.get("root"), image_size=None if size is None else int(size))


def list_datasets() -> list[str]:
    """Names accepted by :class:`DatasetSpec`."""
    return list(DATASETS)


def default_image_size(spec: DatasetSpec) -> int:
    """The image side used when ``spec.image_size`` is None."""
    return int(spec.image_size or _DEFAULT_SIZE[spec.name])


def dataset_stats(spec: DatasetSpec) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` used to normalise ``spec``'s images (docs/method.md §12.2)."""
    if spec.name in ("cifar10", "cifar100"):
        return _CIFAR_STATS
    if spec.name == "imagefolder":
        return _IMAGENET_STATS
    if spec.name == "fashion-mnist":
        return FASHION_MNIST_STATS
    return _digits_stats(default_image_size(spec))


#: datasets whose images are grey by construction (one channel replicated to three)
GRAY_DATASETS = ("digits", "fashion-mnist")
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F")


def is_grayscale(spec: DatasetSpec, sample: int = 64) -> bool:
    """Whether the training images of ``spec`` are grey, which decides ``augmentation = "auto"``.

    Digits and Fashion-MNIST are grey, CIFAR is colour. An image folder is grey when each of up to
    ``sample`` training files spread evenly over the split is: a grey PIL mode, or three equal
    channels after decoding (read at reduced size). Unreadable files are skipped; a folder with no
    readable sample counts as colour.
    """
    if spec.name in GRAY_DATASETS:
        return True
    if spec.name != "imagefolder":
        return False
    from .images import BadImageError, list_split, open_checked, to_rgb

    files = list_split(_require_root(spec), "train")
    n = len(files)
    if n == 0:
        return False
    picks = sorted({int(i * n / min(n, sample)) for i in range(min(n, sample))})
    seen = 0
    for i in picks:
        try:
            with open_checked(files.paths[i]) as img:
                if img.mode in _GRAY_MODES:
                    seen += 1
                    continue
                img.draft("RGB", (64, 64))
                rgb = np.asarray(to_rgb(img), dtype=np.int16)
        except BadImageError:
            continue
        if np.abs(rgb[..., 0] - rgb[..., 1]).max() > 2 or np.abs(rgb[..., 1] - rgb[..., 2]).max() > 2:
            return False  # JPEG chroma noise stays within a couple of levels on grey images
        seen += 1
    return seen > 0


def num_classes(spec: DatasetSpec) -> int:
    """Number of classes of ``spec`` (image folders: class sub-folders of ``train``)."""
    if spec.name == "cifar100":
        return 100
    if spec.name == "imagefolder":
        return len(_folder_classes(_require_root(spec)))
    if spec.name == "fashion-mnist":
        return len(FASHION_MNIST_CLASSES)
    return 10


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of an NCHW batch to ``size`` x ``size``; no-op if already there."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def load_split(spec: DatasetSpec, split: str, normalized: bool = True,
               resize: bool = True, max_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a whole split into memory.

    Args:
        spec: the dataset.
        split: ``"train"`` or ``"test"`` (``"val"`` is an alias of ``"test"``).
        normalized: subtract the dataset mean and divide by its std; else values in [0, 1].
        resize: bring CIFAR / image-folder images to the spec's image size now. ``False`` keeps
            CIFAR at its stored 32 px so that upsampled recipes (CIFAR at 224 px, 30 GB if resized
            up front) resize per batch with :func:`resize_images` instead. Digits are always
            returned at the spec's size (they are tiny).
        max_images: image folders only: decode a seeded random subset of at most this many files
            (calibration of an export needs a few hundred, not the whole folder); other datasets
            are small and returned whole.

    Returns:
        ``(images, labels)``: float32 ``(N, 3, S, S)`` and int64 ``(N,)``; fresh tensors per call
        (Fashion-MNIST: a view of one channel expanded to 3, see the module docstring).

    Raises:
        DataError: unknown split, missing or malformed data.
    """
    if split == "val":
        split = "test"
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; valid: train, test")
    size = default_image_size(spec)
    if spec.name == "digits":
        images, labels = _digits(size)
        x = images[0] if split == "train" else images[1]
        y = labels[0] if split == "train" else labels[1]
        x = x.clone()
    elif spec.name == "fashion-mnist":
        return _fashion_tensors(spec, split, size, normalized, resize)
    else:
        root = _require_root(spec)
        if spec.name == "imagefolder":
            raw, labels_np = _folder_split(root, split, size, max_images)
        else:
            raw, labels_np = _cifar_split(root, spec.name, split)
        x = torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(255.0)
        if resize and x.shape[-1] != size:
            x = resize_images(x, size).clamp_(0, 1)
        y = torch.from_numpy(labels_np).long()
    if normalized:
        mean, std = dataset_stats(spec)
        x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(), y.clone()


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=4)
def _digits(size: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    # The 8x8 digits ship inside the package (assets/DIGITS-SOURCE.txt: source, licence, split).
    with np.load(DIGITS_FILE) as arrays:
        images, labels = arrays["images"], arrays["labels"]
        train_idx, test_idx = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train_idx", "test_idx"))
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.from_numpy(labels.astype(np.int64))
    return (x[train_idx], x[test_idx]), (y[train_idx], y[test_idx])


@functools.lru_cache(maxsize=4)
def _digits_stats(size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = _digits(size)[0][0]
    mean = tuple(round(float(v), 4) for v in x.mean(dim=(0, 2, 3)))
    std = tuple(round(float(v), 4) for v in x.std(dim=(0, 2, 3)))
    return mean, std


# --------------------------------------------------------------------------- IDX / Fashion-MNIST

# IDX type codes (the third header byte) -> big-endian numpy dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_EXPECTED = "an IDX file (00 00 <type> <ndim>, ndim big-endian uint32 sizes, then the data; optionally gzipped)"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST / Fashion-MNIST format), plain or gzip-compressed.

    The header must be two zero bytes, a known type code (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), the number of dimensions (>= 1), and one big-endian
    uint32 size per dimension; the data that follows must be exactly ``prod(sizes)`` items.

    Returns:
        A fresh, writable array in native byte order.

    Raises:
        DataError: unreadable file, bad gzip stream or any header/length mismatch (one line, naming the file).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            reason = " ".join(str(exc).split())[:80] or type(exc).__name__
            raise DataError(f"{path} is a corrupt gzip stream ({reason}); expected {_IDX_EXPECTED}") from None
    if len(raw) < 4:
        raise DataError(f"{path} is too short ({len(raw)} bytes) for an IDX header; expected {_IDX_EXPECTED}")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} has magic number 0x{raw[:4].hex()}, not an IDX file; expected {_IDX_EXPECTED}")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DataError(f"{path} has unknown IDX type code 0x{code:02x}; valid: "
                        + ", ".join(f"0x{c:02x}" for c in _IDX_DTYPES))
    if ndim < 1:
        raise DataError(f"{path} declares 0 dimensions; expected {_IDX_EXPECTED}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} of {header} bytes)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {what}: header {'x'.join(map(str, shape))} of {dtype.name} needs "
                        f"{expected} bytes, the file has {len(raw)}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable copy (frombuffer views are read-only)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``), atomically.

    Raises:
        DataError: a dtype IDX cannot hold, or a 0-d array.
    """
    from .files import atomic_write_bytes

    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None or array.ndim < 1 or array.ndim > 255:
        raise DataError(f"cannot write a {array.dtype} array of {array.ndim} dimension(s) as IDX; valid: "
                        "uint8, int8, int16, int32, float32, float64 with 1-255 dimensions")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    data = header + np.ascontiguousarray(array.astype(_IDX_DTYPES[code])).tobytes()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)


def fashion_mnist_root(spec: DatasetSpec) -> Path:
    """The folder Fashion-MNIST is read from: ``spec.root`` or :data:`FASHION_MNIST_ROOT`."""
    return Path(spec.root or FASHION_MNIST_ROOT).expanduser()


def _idx_file(root: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


@functools.lru_cache(maxsize=4)
def _fashion_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    bases = FASHION_MNIST_FILES[split]
    found = [_idx_file(root, b) for b in bases]
    paths = [p for p in found if p is not None]
    if len(paths) != len(bases):
        missing = ", ".join(b + "[.gz]" for b, p in zip(bases, found) if p is None)
        where = ("install them with: apt-get install dataset-fashion-mnist"
                 if str(root) == FASHION_MNIST_ROOT else
                 f"put the Fashion-MNIST IDX files there, or drop --data-root to use {FASHION_MNIST_ROOT} "
                 "(apt-get install dataset-fashion-mnist)")
        raise DataError(f"fashion-mnist: {missing} not found in {root}; {where}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DataError(f"{paths[0]} holds {images.dtype} {'x'.join(map(str, images.shape))}; "
                        "expected uint8 images N x H x W")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{paths[1]} holds {labels.dtype} {'x'.join(map(str, labels.shape))}; expected uint8 labels N")
    if len(labels) != len(images):
        raise DataError(f"{paths[1]} has {len(labels)} labels but {paths[0]} has {len(images)} images")
    if len(images) == 0:
        raise DataError(f"{paths[0]} holds no images")
    if int(labels.max()) >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{paths[1]} has label {int(labels.max())}; valid: 0..{len(FASHION_MNIST_CLASSES) - 1}")
    return images, labels.astype(np.int64)


def _fashion_tensors(spec: DatasetSpec, split: str, size: int, normalized: bool,
                     resize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    raw, labels = _fashion_split(fashion_mnist_root(spec), split)
    x = torch.from_numpy(raw).unsqueeze(1).float().div_(255.0)  # a fresh (N, 1, H, W) copy
    if resize and x.shape[-1] != size:
        x = resize_images(x, size).clamp_(0, 1)
    if normalized:
        mean, std = FASHION_MNIST_STATS
        x.sub_(mean[0]).div_(std[0])
    # the 3-channel stem sees the grayscale channel replicated (a view: no extra memory)
    return x.expand(-1, 3, -1, -1), torch.from_numpy(labels).clone()


def write_fashion_mnist_subset(out_dir: str | os.PathLike, n_train: int, n_test: int,
                               root: str | os.PathLike | None = None) -> Path:
    """Write the first ``n_train`` training and ``n_test`` test images (and labels) of Fashion-MNIST
    from ``root`` (default :data:`FASHION_MNIST_ROOT`) to ``out_dir`` as IDX files (``--data-root``
    of a fixed, smaller split).

    Raises:
        DataError: the source is missing or corrupt, or a count is < 1.
    """
    if n_train < 1 or n_test < 1:
        raise DataError(f"subset sizes must be >= 1, got {n_train} train / {n_test} test")
    src = fashion_mnist_root(DatasetSpec("fashion-mnist", str(root) if root else None))
    out = Path(out_dir)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = _fashion_split(src, split)
        img_name, lab_name = FASHION_MNIST_FILES[split]
        write_idx(out / img_name, images[:n])
        write_idx(out / lab_name, labels[:n].astype(np.uint8))
    return out


# --------------------------------------------------------------------------- helpers


def _require_root(spec: DatasetSpec) -> Path:
    layouts = {
        "cifar10": "a folder with data_batch_1..5 and test_batch (CIFAR-10 python version)",
        "cifar100": "a folder with train and test (CIFAR-100 python version)",
        "imagefolder": "a folder with train/<class>/*.jpg and val/<class>/... (or test/), a flat folder of images, "
                       "or a file list train.csv|txt",
    }
    if not spec.root:
        raise DataError(f"dataset {spec.name!r} needs a data root (--data-root): {layouts[spec.name]}")
    root = Path(spec.root).expanduser()
    if spec.name == "imagefolder" and root.is_file() and root.suffix.lower() in (".csv", ".txt"):
        return root  # a file list (us3l.core.images)
    if not root.is_dir():
        raise DataError(f"data root {root} of dataset {spec.name!r} does not exist; expected {layouts[spec.name]}")
    return root


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays (the CIFAR files hold nothing else)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 encode bytes this way
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_file(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    expected = f"a pickled dict with b'data' (N x 3072 uint8) and {label_key!r}"
    try:
        with open(path, "rb") as fh:
            data = _NumpyOnlyUnpickler(io.BytesIO(fh.read()), encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # any unpickling failure means "not a CIFAR file"
        reason = " ".join(str(exc).split())[:80]
        raise DataError(f"{path} is not a CIFAR python-pickle batch ({type(exc).__name__}: {reason}); expected {expected}") from None
    if not isinstance(data, dict) or b"data" not in data or label_key not in data:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in data) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path} is malformed (found {keys}); expected {expected}")
    images, labels = np.asarray(data[b"data"]), np.asarray(data[label_key])
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072 or labels.shape != (images.shape[0],):
        raise DataError(f"{path} is malformed (data {images.dtype} {images.shape}, labels {labels.shape}); expected {expected}")
    return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _cifar_split(root: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        label_key, sub, n_classes = b"labels", "cifar-10-batches-py", 10
    else:
        files, label_key, sub, n_classes = [split], b"fine_labels", "cifar-100-python", 100
    if not (root / files[0]).is_file() and (root / sub / files[0]).is_file():
        root = root / sub
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(
            f"{name} folder {root} lacks {', '.join(missing)}; expected the python-pickle layout "
            f"({'data_batch_1..5, test_batch' if name == 'cifar10' else 'train, test'})"
        )
    parts = [_read_cifar_file(root / f, label_key) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{name} labels in {root} are outside 0..{n_classes - 1}")
    return images, labels


def _folder_classes(root: Path) -> tuple[str, ...]:
    from .images import list_split

    classes = list_split(root, "train").classes
    if not classes:
        raise DataError(f"image data {root} is unlabelled (a flat folder or a list without labels); class counts "
                        "and kNN/linear evaluation need train/<class>/*.jpg or labelled file lists")
    return classes


@functools.lru_cache(maxsize=4)
def _folder_split(root: Path, split: str, size: int, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole split decoded (centre view); bad images are skipped with a warning.

    Training and evaluation stream image folders instead (``us3l.trainer.pipeline``); this loads
    everything and suits small folders only.
    """
    import logging

    from .images import BadImageError, list_split, load_center

    files = list_split(root, split)
    picked: Sequence[int] = range(len(files))
    if max_images is not None and max_images < len(files):
        order = np.random.default_rng(0).permutation(len(files))[:max_images]
        picked = sorted(int(i) for i in order)
    images, labels, bad = [], [], []
    for path, label in ((files.paths[i], files.labels[i]) for i in picked):
        try:
            images.append(load_center(path, size))
        except BadImageError as exc:
            bad.append(str(exc))
            continue
        labels.append(int(label))
    if bad:
        logging.getLogger(__name__).warning("skipped %d bad image(s) in %s, first: %s", len(bad), files.source, bad[0])
    if not images:
        raise DataError(f"{files.source} contains no readable images")
    return np.stack(images), np.asarray(labels, dtype=np.int64)
