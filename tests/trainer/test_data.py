"""Datasets: fixed digits split, CIFAR pickle layout, image folders, one-line DataErrors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from us3l.core.data import (DatasetSpec, dataset_stats, default_image_size, list_datasets, load_split,
                              num_classes)
from us3l.core.errors import DataError, US3LError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_digits_fixed_stratified_split():
    spec = DatasetSpec()
    x, y = load_split(spec, "train")
    xt, yt = load_split(spec, "test")
    assert x.shape == (1437, 3, 16, 16) and xt.shape == (360, 3, 16, 16)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(yt).min() >= 35  # stratified: every class ~36 times
    x2, y2 = load_split(DatasetSpec.from_dict(spec.to_dict()), "train")
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x01, _ = load_split(spec, "train", normalized=False)
    assert 0.0 <= float(x01.min()) and float(x01.max()) <= 1.0
    mean, std = dataset_stats(spec)
    assert torch.allclose((x01 - mean[0]) / std[0], x, atol=1e-5)
    assert abs(float(x.mean())) < 0.01
    x01[:] = 5  # callers get fresh tensors, the cache is not modified
    assert float(load_split(spec, "train", normalized=False)[0].max()) <= 1.0
    assert torch.equal(x01[0, 0], x01[0, 2]) and num_classes(spec) == 10


def test_digits_ship_inside_the_package_with_a_stratified_split():
    """The embedded array file is the source (scikit-learn's bundled copy of UCI digits) unchanged:
    1,797 images of 8x8 in 0..16, a stratified 1437/360 split that partitions it."""
    import numpy as np

    from us3l.core.data import DIGITS_FILE

    assert DIGITS_FILE.with_name("DIGITS-SOURCE.txt").is_file()  # source and licence travel with it
    with np.load(DIGITS_FILE) as a:
        images, labels, tr, te = a["images"], a["labels"], a["train_idx"], a["test_idx"]
    assert images.shape == (1797, 8, 8) and images.max() == 16 and images.min() == 0
    assert sorted(np.concatenate([tr, te]).tolist()) == list(range(1797))  # a partition
    counts_all, counts_test = np.bincount(labels, minlength=10), np.bincount(labels[te], minlength=10)
    assert len(te) == 360 and np.abs(counts_test / 360 - counts_all / 1797).max() < 0.01  # stratified
    x8, y8 = load_split(DatasetSpec(image_size=8), "train", normalized=False)
    xt8, _ = load_split(DatasetSpec(image_size=8), "test", normalized=False)
    src = torch.from_numpy(images / 16.0).float()
    assert torch.allclose(torch.cat([x8[:, 0], xt8[:, 0]]).sum(0), src.sum(0), atol=1e-3)
    assert torch.equal(x8[:, 0], src[torch.from_numpy(tr.astype("int64"))])
    assert default_image_size(DatasetSpec(image_size=8)) == 8 and default_image_size(DatasetSpec()) == 16


def test_spec_validation():
    assert list_datasets() == ["digits", "fashion-mnist", "cifar10", "cifar100", "imagefolder"]
    with pytest.raises(US3LError):
        DatasetSpec("mnist")
    with pytest.raises(DataError):
        DatasetSpec(image_size=0)
    with pytest.raises(DataError):
        load_split(DatasetSpec(), "holdout")


def _write_batch(path, n, label_key=b"labels", seed=0):
    rng = np.random.default_rng(seed)
    data = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), label_key: list(rng.integers(0, 10, n))}
    path.write_bytes(pickle.dumps(data))
    return data


def test_cifar10_pickle_layout(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    batches = [_write_batch(root / f"data_batch_{i}", 3, seed=i) for i in range(1, 6)]
    _write_batch(root / "test_batch", 2, seed=9)
    spec = DatasetSpec("cifar10", str(tmp_path))  # the extracted sub-folder is found
    x, y = load_split(spec, "train", normalized=False)
    assert x.shape == (15, 3, 32, 32) and y.tolist()[:3] == [int(v) for v in batches[0][b"labels"]]
    first = torch.from_numpy(batches[0][b"data"][0].reshape(3, 32, 32)).float() / 255
    assert torch.allclose(x[0], first)
    assert load_split(spec, "test")[0].shape == (2, 3, 32, 32)
    assert load_split(DatasetSpec("cifar10", str(root), image_size=16), "test")[0].shape == (2, 3, 16, 16)


def test_cifar100_pickle_layout(tmp_path):
    rng = np.random.default_rng(0)
    legacy = pickle.dumps({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"fine_labels": [1, 2, 3, 99]},
                          protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    (tmp_path / "train").write_bytes(legacy)  # protocol 2 and the numpy-1 module path, like the real files
    _write_batch(tmp_path / "test", 2, b"fine_labels")
    spec = DatasetSpec("cifar100", str(tmp_path))
    assert load_split(spec, "train")[0].shape == (4, 3, 32, 32) and num_classes(spec) == 100


def test_missing_cifar_is_one_line(tmp_path):
    with pytest.raises(DataError) as exc:
        load_split(DatasetSpec("cifar10", str(tmp_path / "nope")), "train")
    assert "does not exist" in _one_line(exc) and "data_batch_1" in str(exc.value)
    with pytest.raises(DataError) as exc:
        load_split(DatasetSpec("cifar10", str(tmp_path)), "train")
    assert "lacks data_batch_1" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        load_split(DatasetSpec("cifar100"), "train")
    assert "--data-root" in _one_line(exc)


class _Evil:
    def __reduce__(self):
        return (__import__("os").system, ("echo pwned",))


@pytest.mark.parametrize("payload", [
    pickle.dumps(_Evil()),  # code execution is refused, never run
    b"not a pickle at all",
    pickle.dumps([1, 2, 3]),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}),  # no labels
    pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}),  # wrong shape
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": __import__("collections").OrderedDict()}),
])
def test_malformed_pickle_is_one_line(tmp_path, payload):
    (tmp_path / "train").write_bytes(payload)
    (tmp_path / "test").write_bytes(payload)
    with pytest.raises(DataError) as exc:
        load_split(DatasetSpec("cifar100", str(tmp_path)), "train")
    assert str(tmp_path / "train") in _one_line(exc)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 1)):
        for ci, cls in enumerate(("cat", "dog")):
            d = tmp_path / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12, 10), (200 * ci, 10 * i, 50)).save(d / f"{i}.png")
    spec = DatasetSpec("imagefolder", str(tmp_path), image_size=8)
    x, y = load_split(spec, "train", normalized=False)
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 0, 1, 1, 1] and num_classes(spec) == 2
    assert float(x[3, 0].mean()) == pytest.approx(200 / 255, abs=1e-2)
    assert load_split(spec, "test")[0].shape == (2, 3, 8, 8)
    (tmp_path / "val").rename(tmp_path / "other")
    with pytest.raises(DataError) as exc:
        load_split(DatasetSpec("imagefolder", str(tmp_path), image_size=7), "test")
    assert "val/" in _one_line(exc)


def test_upsampled_cifar_stays_native_until_batches_are_resized(tmp_path):
    # CIFAR at 224 px (the ViT recipe) must not be materialised up front (~30 GB for 50k images).
    from us3l.trainer.probes import _batches
    from us3l.core.data import resize_images

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        _write_batch(root / f"data_batch_{i}", 2, seed=i)
    _write_batch(root / "test_batch", 2, seed=9)
    spec = DatasetSpec("cifar10", str(root), image_size=64)
    native, _ = load_split(spec, "train", resize=False)
    resized, _ = load_split(spec, "train")
    assert native.shape == (10, 3, 32, 32) and resized.shape == (10, 3, 64, 64)
    lazy = list(_batches(native, 4, size=64))
    assert [b.shape[0] for b in lazy] == [4, 4, 2] and lazy[0].shape[-1] == 64
    torch.testing.assert_close(torch.cat(lazy), resize_images(native, 64))


def test_grayscale_detection_decides_auto_augmentation(tmp_path):
    """``augmentation = "auto"`` follows the data's channels: digits / Fashion-MNIST grey, CIFAR colour, and an
    image folder grey only when its files are (grey PNG modes, or RGB JPEGs whose channels agree)."""
    from PIL import Image

    from us3l.core.data import is_grayscale

    assert is_grayscale(DatasetSpec("digits")) and is_grayscale(DatasetSpec("fashion-mnist"))
    assert not is_grayscale(DatasetSpec("cifar10", str(tmp_path)))  # decided by name: no files read
    rng = np.random.default_rng(0)
    for kind in ("grey", "colour"):
        for cls in ("a", "b"):
            folder = tmp_path / kind / "train" / cls
            folder.mkdir(parents=True)
            for i in range(3):
                g = rng.integers(0, 255, (20, 24), dtype=np.uint8)
                if kind == "grey":  # a grey PNG and a grey picture saved as an RGB JPEG
                    Image.fromarray(g).save(folder / f"{i}.png")
                    Image.fromarray(np.stack([g] * 3, -1)).save(folder / f"{i}.jpg", quality=95)
                else:
                    Image.fromarray(np.stack([g] * 3, -1)).save(folder / f"{i}.png")
                    Image.fromarray(np.stack([g, g // 2, 255 - g], -1)).save(folder / f"{i}.jpg", quality=95)
    assert is_grayscale(DatasetSpec("imagefolder", str(tmp_path / "grey")))
    assert not is_grayscale(DatasetSpec("imagefolder", str(tmp_path / "colour")))
