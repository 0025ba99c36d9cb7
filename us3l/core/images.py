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

Decoding: **one decoder** (:class:`SourceImage`, :func:`decode_image`, :func:`load_center`) for
training, evaluation, fine-tuning, BN and INT8 calibration and ``us3l predict``. It applies the
EXIF orientation, brings 16-bit, palette and CMYK images to 8-bit RGB or grey, composites alpha
over white and turns colour into grey by ITU-R BT.601 luma; the exact rules are in the comment
above :func:`to_mode` and in docs/files.md. An unreadable, truncated or decompression-bomb file
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
        in_class = _images_in(folder / cls)
        paths += in_class
        labels += [index] * len(in_class)
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
#
# The one image decoder. Training crops, evaluation and fine-tuning views, BN and INT8 calibration
# images and `us3l predict` all read files through SourceImage.decode, so one file gives the same
# pixels everywhere. The rules (docs/files.md, "How an image file becomes pixels") in order:
#   1. EXIF orientation (tag 0x0112, values 2..8) is applied; the size seen is the displayed size;
#   2. bit depth: 16-bit grey (I;16*) and 32-bit integer (I) keep the high byte of the 16-bit value
#      (v >> 8 after clipping to [0, 65535]), as Pillow does for 16-bit colour PNGs; 32-bit float (F)
#      is read as [0, 1] (round(255 v) after clipping); bilevel (1) is 0 / 255;
#   3. palette (P) becomes RGBA when it has a transparent entry, else RGB; CMYK becomes RGB by
#      Pillow's conversion round((255 - C)(255 - K) / 255) per channel (embedded ICC profiles are not
#      applied); YCbCr, LAB and HSV become RGB by Pillow;
#   4. alpha (RGBA, LA, PA, premultiplied RGBa / La) is composited over white:
#      round((c a + 255 (255 - a)) / 255) per channel, then dropped;
#   5. colour to grey (a model whose preprocessing says "gray"): ITU-R BT.601 luma as Pillow
#      computes it, L = (19595 R + 38470 G + 7471 B + 32768) >> 16 (0.299 R + 0.587 G + 0.114 B,
#      rounded); grey to RGB copies the channel.

_DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, struct.error,
                                                   IndexError, ZeroDivisionError)
COLORS = ("rgb", "gray")
ORIENTATION_TAG = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


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


def exif_orientation(img: Any) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 when absent or invalid (header only)."""
    try:
        value = int(img.getexif().get(ORIENTATION_TAG, 1))
    except _DECODE_ERRORS + (TypeError, KeyError, AttributeError):
        return 1
    return value if 1 <= value <= 8 else 1


def orient(img: Any, orientation: int) -> Any:
    """``img`` turned as EXIF ``orientation`` says (1: unchanged), the transposes of ``ImageOps.exif_transpose``."""
    from PIL import Image

    T = Image.Transpose
    op = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_270,
          7: T.TRANSVERSE, 8: T.ROTATE_90}.get(orientation)
    return img if op is None else img.transpose(op)


def _over_white(arr: np.ndarray) -> np.ndarray:
    """``(H, W, C + 1)`` uint8 with straight alpha last -> ``(H, W, C)``: round((c a + 255 (255 - a)) / 255)."""
    a = arr[..., -1:].astype(np.uint32)
    c = arr[..., :-1].astype(np.uint32)
    return ((c * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def to_mode(img: Any, color: str = "rgb") -> Any:
    """Rules 2-5 of the decoder (see the comment above): a loaded Pillow image as mode ``RGB``
    (``color="rgb"``) or ``L`` (``color="gray"``).

    Raises:
        BadImageError: the pixels cannot be decoded (truncated or corrupt data).
    """
    from PIL import Image

    if color not in COLORS:
        raise ValueError(f"color {color!r}; valid: {', '.join(COLORS)}")
    path = getattr(img, "filename", "") or "<image>"
    try:
        img.load()
        mode = img.mode
        if mode.startswith("I;16") or mode == "I":
            arr = np.asarray(img).astype(np.int64)
            img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), "L")
        elif mode == "F":
            arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
            img = Image.fromarray(np.rint(np.clip(arr, 0.0, 1.0) * 255).astype(np.uint8), "L")
        elif mode == "1":
            img = img.convert("L")
        elif mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif mode in ("PA", "RGBa"):
            img = img.convert("RGBA")
        elif mode == "La":
            img = img.convert("LA")
        if img.mode in _ALPHA_MODES:
            arr = np.asarray(img, dtype=np.uint8)
            flat = _over_white(arr)
            img = Image.fromarray(flat[..., 0], "L") if flat.shape[-1] == 1 else Image.fromarray(flat, "RGB")
        if img.mode not in ("RGB", "L"):
            img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV: Pillow's conversions
        target = "RGB" if color == "rgb" else "L"
        return img if img.mode == target else img.convert(target)
    except _DECODE_ERRORS as exc:
        raise BadImageError(str(path), _reason(exc)) from None


def to_rgb(img: Any) -> Any:
    """:func:`to_mode` with ``color="rgb"``."""
    return to_mode(img, "rgb")


def draft_for(img: Any, need_w: float, need_h: float) -> None:
    """Let a JPEG decode at 1/2, 1/4 or 1/8 scale while the result stays at least ``need_w x need_h``."""
    if getattr(img, "format", None) == "JPEG" and need_w >= 1 and need_h >= 1:
        img.draft("RGB", (int(np.ceil(need_w)), int(np.ceil(need_h))))


class SourceImage:
    """One image file, opened (header only): its displayed ``size`` (EXIF orientation applied) is
    known before a pixel is decoded, so crop boxes and resize factors are drawn on it.

    Use as a context manager; :meth:`decode` gives the pixels by the decoder's rules.

    Raises:
        BadImageError: unreadable file or decompression bomb (on opening).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.raw = open_checked(self.path)
        self.orientation = exif_orientation(self.raw)
        w, h = self.raw.size
        self.size: tuple[int, int] = (h, w) if self.orientation >= 5 else (w, h)

    def __enter__(self) -> SourceImage:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.raw.close()

    def decode(self, color: str = "rgb", shrink: float = 1.0) -> Any:
        """The pixels as a Pillow image of mode ``RGB`` or ``L``, oriented for display.

        Args:
            color: ``rgb`` or ``gray`` (rule 5).
            shrink: a JPEG may be decoded up to this many times smaller on each side (draft mode:
                1/2, 1/4 or 1/8); the caller maps its boxes by the decoded size.

        Raises:
            BadImageError: truncated or corrupt pixel data.
        """
        if shrink > 1:
            w, h = self.raw.size
            draft_for(self.raw, w / shrink, h / shrink)
        return orient(to_mode(self.raw, color), self.orientation)


def decode_image(path: str | os.PathLike, color: str = "rgb") -> np.ndarray:
    """The whole image at ``path`` as uint8 ``(H, W, 3)`` (``rgb``) or ``(H, W)`` (``gray``), by the
    decoder's rules (EXIF orientation, bit depth, palette, CMYK, alpha over white, luma).

    Raises:
        BadImageError: unreadable, truncated or decompression-bomb file.
    """
    with SourceImage(path) as src:
        return np.asarray(src.decode(color), dtype=np.uint8)


def center_box(width: int, height: int, size: int) -> tuple[float, float, float, float]:
    """The evaluation view's source box on a ``width x height`` image: the shorter side resized to
    ``size``, the centre ``size x size`` square (fractional edges, as the resize samples them)."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (nw - size) / 2, (nh - size) / 2
    return (left / nw * width, top / nh * height, (left + size) / nw * width, (top + size) / nh * height)


def load_center(path: str, size: int, color: str = "rgb") -> np.ndarray:
    """The evaluation view: shorter side resized to ``size``, centre crop ``size x size`` (Pillow
    bilinear over the source box), uint8 ``(S, S, 3)`` (``rgb``) or ``(S, S)`` (``gray``).

    Used by evaluation, fine-tuning, BN and INT8 calibration and ``us3l predict`` alike.

    Raises:
        BadImageError: see :class:`SourceImage`.
    """
    from PIL import Image

    with SourceImage(path) as src:
        w, h = src.size
        img = src.decode(color, shrink=min(w, h) / size)
        sx, sy = img.size[0] / w, img.size[1] / h  # the draft may have reduced it
        x0, y0, x1, y1 = center_box(w, h, size)
        try:
            out = img.resize((size, size), Image.Resampling.BILINEAR, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))
        except _DECODE_ERRORS as exc:
            raise BadImageError(path, _reason(exc)) from None
        return np.asarray(out, dtype=np.uint8)
