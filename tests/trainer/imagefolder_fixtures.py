"""Synthetic image folders for the streaming-pipeline tests: every mode Pillow reads, odd sizes, bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

SIZES = [(40, 28), (28, 40), (36, 36), (50, 30)]  # non-square, both orientations
BAD_FILES = ("train/a/corrupt.jpg", "train/b/truncated.jpg", "train/a/bomb.png")


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A few hundred bytes whose header claims width x height RGB pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def make_folder(root: Path, per_class: int = 12, val_per_class: int = 4) -> Path:
    """``root/train/{a,b}`` and ``root/val/{a,b}``: reddish class a, bluish class b; JPEG RGB, PNG
    grayscale, JPEG CMYK, PNG RGBA, PNG palette; plus a corrupt, a truncated and a bomb file in train/."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for cls, base in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                w, h = SIZES[i % len(SIZES)]
                pixels = np.clip(np.array(base) + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
                img = Image.fromarray(pixels)
                kind = i % 6
                if kind == 1:
                    img.convert("L").save(folder / f"{i}.png")
                elif kind == 2:
                    img.convert("CMYK").save(folder / f"{i}.jpg")
                elif kind == 3:
                    rgba = img.convert("RGBA")
                    rgba.putalpha(200)
                    rgba.save(folder / f"{i}.png")
                elif kind == 4:
                    img.convert("P").save(folder / f"{i}.png")
                else:
                    img.save(folder / f"{i}.jpg", quality=90)
    (root / BAD_FILES[0]).write_bytes(b"this is not an image" * 10)
    whole = (root / "train" / "b" / "0.jpg").read_bytes()
    (root / BAD_FILES[1]).write_bytes(whole[: len(whole) // 2])
    png_bomb(root / BAD_FILES[2])
    return root
