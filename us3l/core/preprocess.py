"""The preprocessing a deployed model expects, as data, and its one implementation for image files.

:func:`preprocessing_for` describes how a dataset's images reach the network (it is recorded in
task checkpoints, export sidecars and ONNX ``metadata_props``); :func:`load_image` applies such a
record to an image file with numpy and Pillow only (no torch), so ``us3l predict`` can run where
only ONNX Runtime is installed.

The record (all keys always present)::

    {"color": "gray" | "rgb",        # gray: one channel copied into the 3-channel stem
     "scale": 255.0,                 # pixel / scale -> [0, 1]
     "resize": "bilinear" | "shorter-side-crop",
     "antialias": bool,              # bilinear: torch's antialias flag of the training data
     "size": S, "mean": [...], "std": [...], "layout": "NCHW", "dtype": "float32"}

``bilinear`` is ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`` with the
recorded ``antialias``: without antialiasing it is computed here exactly (the digits path); with it
Pillow's bilinear filter on the float image (the filter torch's antialias mode reproduces) is used.
``shorter-side-crop`` (image folders) is the dataset loaders' own centre view
(:func:`us3l.core.images.load_center`). Files are decoded by the one decoder of
:mod:`us3l.core.images` (docs/files.md states its rules).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def preprocessing_for(spec: Any, size: int | None = None) -> dict[str, Any]:
    """The preprocessing record of dataset ``spec`` at ``size`` px (default: the dataset's)."""
    from .data import dataset_stats, default_image_size

    mean, std = dataset_stats(spec)
    size = int(size or default_image_size(spec))
    gray = spec.name in ("digits", "fashion-mnist")
    return {"color": "gray" if gray else "rgb", "scale": 255.0,
            "resize": "shorter-side-crop" if spec.name == "imagefolder" else "bilinear",
            "antialias": spec.name != "digits", "size": size, "mean": [float(v) for v in mean],
            "std": [float(v) for v in std], "layout": "NCHW", "dtype": "float32"}


def _bilinear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of torch's bilinear resize (align_corners=False, no antialias)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = (src - i0).astype(np.float32)
    return i0, i1, frac


def resize_bilinear(img: np.ndarray, size: int, antialias: bool) -> np.ndarray:
    """Resize an ``(H, W, C)`` float32 image to ``size`` x ``size`` like the training data was."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if antialias and (h > size or w > size):
        from PIL import Image

        chans = [np.asarray(Image.fromarray(img[..., c], mode="F").resize((size, size), Image.Resampling.BILINEAR))
                 for c in range(img.shape[2])]
        return np.stack(chans, axis=-1).astype(np.float32)
    y0, y1, fy = _bilinear_axis(h, size)
    x0, x1, fx = _bilinear_axis(w, size)
    top = img[y0][:, x0] * (1 - fx)[None, :, None] + img[y0][:, x1] * fx[None, :, None]
    bottom = img[y1][:, x0] * (1 - fx)[None, :, None] + img[y1][:, x1] * fx[None, :, None]
    return (top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]).astype(np.float32)


def check_preprocessing(pre: Any) -> dict[str, Any]:
    """``pre`` validated (a dict with every key of the record).

    Raises:
        DataError: missing or malformed fields.
    """
    need = ("color", "scale", "resize", "antialias", "size", "mean", "std")
    if not isinstance(pre, dict) or any(k not in pre for k in need):
        raise DataError(f"preprocessing record {pre!r} is incomplete; needs {', '.join(need)}")
    if pre["color"] not in ("gray", "rgb") or pre["resize"] not in ("bilinear", "shorter-side-crop"):
        raise DataError(f"preprocessing record has color {pre['color']!r} / resize {pre['resize']!r}; "
                        "valid: gray|rgb and bilinear|shorter-side-crop")
    if len(pre["mean"]) != 3 or len(pre["std"]) != 3 or int(pre["size"]) < 1:
        raise DataError("preprocessing record needs 3 means, 3 stds and a positive size")
    return pre


def load_image(path: str | os.PathLike, pre: dict[str, Any]) -> np.ndarray:
    """One image file as the network's float32 ``(3, S, S)`` input, preprocessed per ``pre``.

    Pixels come from the one decoder (:mod:`us3l.core.images`: EXIF orientation, 16-bit, palette,
    CMYK, alpha over white, colour to grey by BT.601 luma), so a file gives the network what the
    training and evaluation loaders give it: ``shorter-side-crop`` is exactly the loaders' centre
    view (:func:`us3l.core.images.load_center`), normalised with the same float32 operations.

    Raises:
        BadImageError: unreadable, truncated or decompression-bomb file (a :class:`DataError`).
        DataError: a malformed record.
    """
    from .images import decode_image, load_center

    pre = check_preprocessing(pre)
    size = int(pre["size"])
    color = str(pre["color"])
    if pre["resize"] == "shorter-side-crop":
        arr = load_center(str(path), size, color).astype(np.float32)
    else:
        arr = decode_image(path, color).astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = arr / np.float32(pre["scale"])
    if pre["resize"] == "bilinear":
        arr = np.clip(resize_bilinear(arr, size, bool(pre["antialias"])), 0.0, 1.0)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    mean = np.asarray(pre["mean"], dtype=np.float32)
    std = np.asarray(pre["std"], dtype=np.float32)
    return np.ascontiguousarray(((arr - mean) / std).transpose(2, 0, 1), dtype=np.float32)


def image_files(target: str | os.PathLike) -> list[Path]:
    """``target`` itself, or the image files under a directory (recursive, sorted by their path
    relative to it; hidden files and folders are skipped).

    Raises:
        DataError: nothing there, or a directory without images.
    """
    p = Path(target)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = []
        for folder, dirs, names in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files += [Path(folder) / n for n in names
                      if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"directory {p} holds no image files; valid: {', '.join(IMAGE_SUFFIXES)}")
        return sorted(files, key=lambda f: f.relative_to(p).parts)
    raise DataError(f"image {p} does not exist; valid: an image file or a directory of images")
