"""The one image decoder (issue 24, item 3): each rule of docs/files.md ("How an image file becomes
pixels") on small real files, and the training crops, the evaluation view and predict's input all
going through it."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from us3l.core.errors import DataError
from us3l.core.images import BadImageError, SourceImage, decode_image, load_center


def png16(path, arr: np.ndarray) -> None:
    """A 16-bit PNG written by hand (grey: (H, W); colour: (H, W, 3)), big-endian samples."""
    h, w = arr.shape[:2]
    colour = 2 if arr.ndim == 3 else 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def with_orientation(img: Image.Image, path, orientation: int, **kw) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), **kw)


def test_sixteen_bit_keeps_the_high_byte(tmp_path):
    values = np.array([[0, 255, 256, 1000, 32767, 32768, 40000, 65535]], dtype=np.uint16)
    png16(tmp_path / "g16.png", values)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert decode_image(tmp_path / "g16.png", "gray").tolist() == [(values >> 8).astype(np.uint8).tolist()[0]]
    rgb = decode_image(tmp_path / "g16.png", "rgb")
    assert rgb.shape == (1, 8, 3) and (rgb == (values >> 8)[..., None]).all()
    png16(tmp_path / "c16.png", np.stack([values, values[:, ::-1], values], -1))  # colour: Pillow, same rule
    assert decode_image(tmp_path / "c16.png")[0, :, 1].tolist() == (values[0, ::-1] >> 8).tolist()


def test_alpha_over_white_then_grey_by_bt601_luma(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent, fully opaque
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    c, a = rgba[..., :3].astype(np.int64), rgba[..., 3:].astype(np.int64)
    want = np.floor((c * a + 255 * (255 - a)) / 255 + 0.5).astype(np.uint8)
    got = decode_image(tmp_path / "a.png")
    assert np.array_equal(got, want) and got[0, 0].tolist() == [255, 255, 255] and np.array_equal(got[0, 1], c[0, 1])
    r, g, b = (want[..., i].astype(np.int64) for i in range(3))
    assert np.array_equal(decode_image(tmp_path / "a.png", "gray"), (19595 * r + 38470 * g + 7471 * b + 32768) >> 16)
    # grey + alpha: the same compositing on the one channel
    la = rng.integers(0, 256, (3, 4, 2), dtype=np.uint8)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    ga = la[..., 1].astype(np.int64)
    want_la = np.floor((la[..., 0] * ga + 255 * (255 - ga)) / 255 + 0.5)
    assert np.array_equal(decode_image(tmp_path / "la.png", "gray"), want_la)
    # a palette with a transparent entry: that entry is white
    pal = Image.new("P", (2, 1))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    assert decode_image(tmp_path / "p.png").tolist() == [[[255, 255, 255], [200, 100, 50]]]


def test_cmyk_jpeg_and_float_images(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (100, 50, 20, 30))
    cmyk.save(tmp_path / "c.jpg", quality=100)
    got = decode_image(tmp_path / "c.jpg").reshape(-1, 3).mean(0)
    want = [(255 - v) * (255 - 30) / 255 for v in (100, 50, 20)]
    assert np.abs(got - want).max() < 3  # JPEG rounding only
    f = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0]], dtype=np.float32)
    Image.fromarray(f, "F").save(tmp_path / "f.tif")
    assert decode_image(tmp_path / "f.tif", "gray").tolist() == [[0, 0, 128, 255, 255]]


@pytest.mark.parametrize("kind", ["jpg", "png"])
def test_exif_orientation_is_applied_before_any_geometry(tmp_path, kind):
    """A 20x10 image stored with orientation 6 (rotate 90 degrees clockwise to display): the decoder
    sees 10x20 and the left column of the stored image becomes the top row."""
    stored = np.zeros((10, 20, 3), dtype=np.uint8)
    stored[:, :5] = (255, 0, 0)  # red left quarter of the stored image
    path = tmp_path / f"r.{kind}"
    with_orientation(Image.fromarray(stored), path, 6, **({"quality": 95} if kind == "jpg" else {}))
    with SourceImage(path) as src:
        assert src.size == (10, 20) and src.orientation == 6
    shown = decode_image(path)
    assert shown.shape == (20, 10, 3)
    assert shown[:4, :, 0].mean() > 200 and shown[-4:, :, 0].mean() < 60  # red on top once displayed
    assert np.array_equal(shown, np.asarray(Image.open(path).transpose(Image.Transpose.ROTATE_270).convert("RGB")))
    # the evaluation view is a centre square of the displayed image (the red band is cut off either way)
    view = load_center(str(path), 10)
    assert view.shape == (10, 10, 3) and view[..., 0].mean() < 60


def test_fast_jpeg_path_leaves_rotated_files_to_the_decoder(tmp_path, monkeypatch):
    pytest.importorskip("simplejpeg")
    pytest.importorskip("cv2")
    from us3l.trainer import pipeline

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    with_orientation(img, tmp_path / "r.jpg", 8, quality=95)
    img.save(tmp_path / "plain.jpg", quality=95)
    with_orientation(img, tmp_path / "one.jpg", 1, quality=95)
    assert pipeline._rotated_jpeg((tmp_path / "r.jpg").read_bytes())
    assert not pipeline._rotated_jpeg((tmp_path / "plain.jpg").read_bytes())
    assert not pipeline._rotated_jpeg((tmp_path / "one.jpg").read_bytes())
    monkeypatch.delenv("US3L_DECODER", raising=False)
    pipeline.fast_backend.cache_clear()
    try:
        rng = np.random.default_rng(0)
        assert pipeline._fast_views(str(tmp_path / "r.jpg"), 8, (0.5, 1.0), rng, 2) is None
        assert pipeline._fast_views(str(tmp_path / "plain.jpg"), 8, (0.5, 1.0), rng, 2) is not None
    finally:
        pipeline.fast_backend.cache_clear()


def test_bad_files_are_bad_images_everywhere(tmp_path):
    from us3l.core.preprocess import load_image

    (tmp_path / "x.png").write_bytes(b"\x89PNG not really")
    for fn in (lambda: decode_image(tmp_path / "x.png"), lambda: load_center(str(tmp_path / "x.png"), 8),
               lambda: load_image(tmp_path / "x.png", {"color": "rgb", "scale": 255.0, "resize": "bilinear",
                                                       "antialias": True, "size": 8, "mean": [0.5] * 3,
                                                       "std": [0.5] * 3})):
        with pytest.raises(BadImageError) as exc:
            fn()
        assert isinstance(exc.value, DataError) and "x.png" in str(exc.value)
