"""Image files: listing a split (class folders, a flat folder, a file list) and decoding one image safely.

Layouts accepted as the root of ``--data imagefolder``:

- ``root/train/<class>/*.jpg`` and ``root/val/<class>/...`` (or ``test/``): labelled; the classes are
  the sub-folders of ``train/`` in sorted order.
- ``root/*.jpg`` or ``root/train/*.jpg``: a flat folder, unlabelled (label ``-1``); enough for
  self-supervised training. kNN / linear evaluation needs a labelled ``val/``.
- a file list ``train.csv`` / ``train.txt``: one image per line, ``path`` or ``path,label`` (CSV;
  a first row ``path[,label]`` is a header) or ``path label`` (text: the last whitespace-separated
  token is the label when it is an integer). Relative paths are relative to the list's folder.
  Labels are integers or class names (sorted to indices). The evaluation split is the sibling list
  with ``train`` replaced by ``val`` (or ``test``) in the file name.

Decoding (:func:`open_checked`, :func:`to_rgb`): grayscale, CMYK, palette, 16-bit and RGBA images
become RGB (transparent pixels over white). An unreadable, truncated or decompression-bomb file
(more than :data:`MAX_PIXELS` pixels, Pillow's limit) raises :class:`BadImageError`, which the
callers count and skip with a warning, or turn into one error line (``--on-bad-image fail``).
"""

from __future__ import annotations

import csv
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
LIST_SUFFIXES = (".csv", ".txt")
MAX_PIXELS = 89_478_485  # Pillow's default decompression-bomb limit (a 1/4 GiB RGBA image)
BAD_IMAGE_POLICIES = ("skip", "fail")
LAYOUTS = ("train/<class>/*.jpg + val/<class>/..., a flat folder of images, or a file list "
           "train.csv|txt (path[,label])")


class BadImageError(DataError):
    """One image file cannot be used (unreadable, truncated, or a decompression bomb)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"bad image {path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ImageList:
    """The files of one split: paths, labels (``-1``: unlabelled) and class names."""

    paths: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def is_file_list(root: str | os.PathLike) -> bool:
    p = Path(root)
    return p.suffix.lower() in LIST_SUFFIXES and p.is_file()


def list_split(root: str | os.PathLike, split: str) -> ImageList:
    """The images of ``split`` ("train", or "test"/"val") under ``root`` (a folder or a file list).

    Raises:
        DataError: the root is missing, holds no images, or has no evaluation split.
    """
    split = "test" if split == "val" else split
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; valid: train, test")
    root = Path(root).expanduser()
    if is_file_list(root):
        return _from_list(_sibling_list(root) if split == "test" else root)
    if not root.is_dir():
        raise DataError(f"image data {root} is neither a folder nor a .csv/.txt file list; expected {LAYOUTS}")
    train = root / "train" if (root / "train").is_dir() else root
    classes = _class_dirs(train)
    if split == "train":
        folder = train
    else:
        found = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
        if found is None:
            raise DataError(f"image folder {root} has no val/ or test/ split (needed for kNN/linear evaluation); "
                            "expected val/<class>/*.jpg")
        folder = found
    if not classes:  # flat, unlabelled
        paths = _images_in(folder)
        if not paths:
            raise DataError(f"{folder} contains no images ({', '.join(IMAGE_SUFFIXES)}); expected {LAYOUTS}")
        return ImageList(tuple(paths), np.full(len(paths), -1, dtype=np.int64), (), str(folder))
    extra = sorted(set(_class_dirs(folder)) - set(classes)) if folder != train else []
    if extra:
        raise DataError(f"{folder} has class folder(s) {', '.join(extra[:5])} that {train} lacks")
    paths, labels = [], []
    for index, cls in enumerate(classes):
        found = _images_in(folder / cls)
        paths += found
        labels += [index] * len(found)
    if not paths:
        raise DataError(f"{folder} contains no images ({', '.join(IMAGE_SUFFIXES)}); expected {LAYOUTS}")
    return ImageList(tuple(paths), np.asarray(labels, dtype=np.int64), tuple(classes), str(folder))


def _images_in(folder: Path) -> list[str]:
    if not folder.is_dir():
        return []
    with os.scandir(folder) as it:
        return sorted(e.path for e in it if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: Path) -> tuple[str, ...]:
    with os.scandir(folder) as it:
        return tuple(sorted(e.name for e in it if e.is_dir() and not e.name.startswith(".")))


def _sibling_list(train_list: Path) -> Path:
    name = train_list.name
    for word in ("val", "test"):
        if "train" in name:
            cand = train_list.with_name(name.replace("train", word))
            if cand.is_file():
                return cand
    raise DataError(f"file list {train_list} has no evaluation list beside it (the name with 'train' replaced by "
                    "'val' or 'test', needed for kNN/linear evaluation)")


def _from_list(path: Path) -> ImageList:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read file list {path}: {exc}") from None
    rows: list[tuple[str, str | None]] = []
    if path.suffix.lower() == ".csv":
        for i, row in enumerate(csv.reader(text.splitlines())):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or cells[0].startswith("#"):
                continue
            if i == 0 and cells[0].lower() in ("path", "file", "filename", "image"):
                continue
            if len(cells) > 2:
                raise DataError(f"{path} line {i + 1} has {len(cells)} columns; valid: path or path,label")
            rows.append((cells[0], cells[1] if len(cells) == 2 and cells[1] else None))
    else:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                rows.append((parts[0], parts[1]))
            else:
                rows.append((line, None))
    if not rows:
        raise DataError(f"file list {path} names no images; expected one path[,label] per line")
    base = path.parent
    paths = tuple(str(p if Path(p).is_absolute() else base / p) for p, _ in rows)
    given = [lab for _, lab in rows]
    if any(lab is None for lab in given):
        if any(lab is not None for lab in given):
            raise DataError(f"file list {path} labels some images and not others; label all or none")
        return ImageList(paths, np.full(len(paths), -1, dtype=np.int64), (), str(path))
    if all(lab.lstrip("-").isdigit() for lab in given if lab is not None):
        values = np.asarray([int(lab) for lab in given if lab is not None], dtype=np.int64)
        if values.min() < 0:
            raise DataError(f"file list {path} has a negative label; valid: 0, 1, ... or class names")
        classes = tuple(str(i) for i in range(int(values.max()) + 1))
        return ImageList(paths, values, classes, str(path))
    names = tuple(sorted({lab for lab in given if lab is not None}))
    index = {n: i for i, n in enumerate(names)}
    return ImageList(paths, np.asarray([index[lab] for lab in given if lab is not None], dtype=np.int64), names,
                     str(path))


# --------------------------------------------------------------------------- decoding

_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, struct.error,
                                                   IndexError, ZeroDivisionError)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())[:120]
    if "truncated" in text.lower():
        return f"truncated file ({text})"
    if "cannot identify image" in text.lower():
        return "unreadable: not an image Pillow can decode"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_checked(path: str) -> Any:
    """``PIL.Image.open(path)`` with the decompression-bomb check made strict (header only, no decode).

    Raises:
        BadImageError: unreadable file, or more than :data:`MAX_PIXELS` pixels.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(path, f"decompression bomb (more than {MAX_PIXELS} pixels)") from None
    except _DECODE_ERRORS as exc:
        raise BadImageError(path, _reason(exc)) from None
    w, h = img.size
    if w < 1 or h < 1 or w * h > MAX_PIXELS:
        img.close()
        raise BadImageError(path, f"decompression bomb ({w}x{h} pixels, limit {MAX_PIXELS})")
    return img


def to_rgb(img: Any) -> Any:
    """Decode ``img`` and return it as RGB: alpha composited over white; L, CMYK, P, I;16 converted."""
    from PIL import Image

    path = getattr(img, "filename", "") or "<image>"
    try:
        img.load()
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
            rgba = img.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(img, dtype=np.float64)
            hi = arr.max() if arr.size and arr.max() > 255 else 255.0
            img = Image.fromarray((arr * (255.0 / hi)).clip(0, 255).astype(np.uint8), "L")
        if img.mode == "F":
            img = Image.fromarray((np.asarray(img) * 255).clip(0, 255).astype(np.uint8), "L")
        return img if img.mode == "RGB" else img.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise BadImageError(str(path), _reason(exc)) from None


def draft_for(img: Any, need_w: float, need_h: float) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while the result stays at least ``need_w x need_h``."""
    if getattr(img, "format", None) == "JPEG" and need_w >= 1 and need_h >= 1:
        img.draft("RGB", (int(np.ceil(need_w)), int(np.ceil(need_h))))


def load_center(path: str, size: int) -> np.ndarray:
    """The evaluation view: shorter side resized to ``size``, centre crop ``size x size``, uint8 HWC RGB.

    Raises:
        BadImageError: see :func:`open_checked` / :func:`to_rgb`.
    """
    from PIL import Image

    with open_checked(path) as raw:
        w, h = raw.size
        scale = size / min(w, h)
        draft_for(raw, w * scale, h * scale)
        img = to_rgb(raw)
        sx, sy = img.size[0] / w, img.size[1] / h  # the draft may have reduced it
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        left, top = (nw - size) / 2, (nh - size) / 2
        box = (left / nw * w * sx, top / nh * h * sy, (left + size) / nw * w * sx, (top + size) / nh * h * sy)
        try:
            out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
        except _DECODE_ERRORS as exc:
            raise BadImageError(path, _reason(exc)) from None
        return np.asarray(out, dtype=np.uint8)
