"""Fashion-MNIST: the numpy IDX reader and its header checks, the Debian files, the CLI on a slice.

The tests that read /usr/share/datasets/fashion-mnist need Debian's dataset-fashion-mnist, which
.ci/run installs: they fail (never skip) when it is missing.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from us3l.core.data import (FASHION_MNIST_CLASSES, FASHION_MNIST_ROOT, FASHION_MNIST_STATS, DatasetSpec,
                            dataset_stats, default_image_size, load_split, num_classes, read_idx,
                            write_fashion_mnist_subset, write_idx)
from us3l.core.errors import DataError

US3L = [sys.executable, "-m", "us3l.cli.main"]


def _one_line(exc: pytest.ExceptionInfo, *parts: str) -> str:
    text = str(exc.value)
    assert text and "\n" not in text, text
    for p in parts:
        assert p in text, text
    return text


@pytest.fixture(scope="module")
def fm_slice(tmp_path_factory) -> Path:
    """The first 256 training and 128 test images of the installed Fashion-MNIST, as IDX files."""
    return write_fashion_mnist_subset(tmp_path_factory.mktemp("fmnist") / "slice", 256, 128)


# ------------------------------------------------------------------ IDX reader


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip_plain_and_gzipped(tmp_path, name):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / name, images)
    raw = (tmp_path / name).read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, 0x08, 3]) and raw[4:8] == (5).to_bytes(4, "big")  # the IDX header, big-endian
    back = read_idx(tmp_path / name)
    assert back.dtype == np.uint8 and np.array_equal(back, images) and back.flags.writeable
    for arr in (np.arange(-3, 3, dtype=np.int32), np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
                np.arange(4, dtype=np.int16), np.array([1.5, -2.25]), np.array([-1, 2], dtype=np.int8)):
        write_idx(tmp_path / "x.idx", arr)
        got = read_idx(tmp_path / "x.idx")
        assert got.dtype == arr.dtype and np.array_equal(got, arr)
    with pytest.raises(DataError) as exc:
        write_idx(tmp_path / "bad.idx", np.zeros(3, dtype=np.int64))
    _one_line(exc, "int64")


def _corrupt(tmp_path: Path) -> dict[str, bytes]:
    good = bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    return {
        "magic": b"\x01\x02" + good[2:],
        "type code": bytes([0, 0, 0x07, 1]) + good[4:],
        "zero dims": bytes([0, 0, 8, 0]),
        "short": b"\x00\x00",
        "header": bytes([0, 0, 8, 3]) + (3).to_bytes(4, "big"),
        "truncated": good[:-1],
        "longer": good + b"\x00",
        "gzip": gzip.compress(good)[:-6],
    }


@pytest.mark.parametrize("case,words", [("magic", "magic number 0x0102"), ("type code", "type code 0x07"),
                                        ("zero dims", "0 dimensions"), ("short", "too short"),
                                        ("header", "inside its header"), ("truncated", "truncated"),
                                        ("longer", "longer than its header"), ("gzip", "corrupt gzip")])
def test_corrupt_idx_files_give_one_line_naming_the_file(tmp_path, case, words):
    path = tmp_path / ("f.gz" if case == "gzip" else "f")
    path.write_bytes(_corrupt(tmp_path)[case])
    with pytest.raises(DataError) as exc:
        read_idx(path)
    _one_line(exc, str(path), words)


def test_mismatched_label_count_and_missing_files(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    spec = DatasetSpec("fashion-mnist", str(tmp_path))
    with pytest.raises(DataError) as exc:
        load_split(spec, "train")
    _one_line(exc, "3 labels", "4 images", "train-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as exc:  # the test files are not there
        load_split(spec, "test")
    _one_line(exc, "t10k-images-idx3-ubyte[.gz]", "t10k-labels-idx1-ubyte[.gz]", str(tmp_path),
              "apt-get install dataset-fashion-mnist")
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 10], dtype=np.uint8))
    with pytest.raises(DataError) as exc:
        load_split(spec, "test")
    _one_line(exc, "label 10", "0..9")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros((2, 1), dtype=np.uint8))
    with pytest.raises(DataError) as exc:
        load_split(spec, "test")
    _one_line(exc, "expected uint8 labels N")


# ------------------------------------------------------------------ the installed data


def test_debian_files_grayscale_replicated_and_normalised():
    """The real files: 60k/10k, 10 balanced classes, the recorded statistics, 3 equal channels."""
    assert Path(FASHION_MNIST_ROOT).is_dir(), "apt-get install dataset-fashion-mnist (.ci/run does)"
    spec = DatasetSpec("fashion-mnist")
    x01, y = load_split(spec, "train", normalized=False)
    assert x01.shape == (60000, 3, 28, 28) and x01.dtype == torch.float32 and y.dtype == torch.int64
    assert x01.stride(1) == 0  # one channel in memory, expanded to the 3-channel stem
    assert torch.bincount(y).tolist() == [6000] * 10
    g = x01[:, 0]
    mean, std = FASHION_MNIST_STATS
    assert abs(float(g.mean()) - mean[0]) < 1e-4 and abs(float(g.std()) - std[0]) < 1e-4
    assert dataset_stats(spec) == FASHION_MNIST_STATS and len(set(mean)) == 1 and len(set(std)) == 1
    xt, yt = load_split(spec, "test")
    assert xt.shape == (10000, 3, 28, 28) and yt.shape == (10000,)
    batch = xt[torch.tensor([0, 5, 9])]  # indexing gives an ordinary tensor with equal channels
    assert batch.is_contiguous() and torch.equal(batch[:, 0], batch[:, 2])
    xt01, _ = load_split(spec, "test", normalized=False)
    torch.testing.assert_close(xt[:, 1], (xt01[:, 1] - mean[1]) / std[1])
    assert num_classes(spec) == len(FASHION_MNIST_CLASSES) == 10 and default_image_size(spec) == 28
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top" and FASHION_MNIST_CLASSES[9] == "Ankle boot"
    x32, _ = load_split(DatasetSpec("fashion-mnist", image_size=32), "test")
    assert x32.shape == (10000, 3, 32, 32)


def test_slice_is_the_first_images(fm_slice):
    full_x, full_y = load_split(DatasetSpec("fashion-mnist"), "test", normalized=False)
    x, y = load_split(DatasetSpec("fashion-mnist", str(fm_slice)), "test", normalized=False)
    assert x.shape == (128, 3, 28, 28) and torch.equal(x, full_x[:128]) and torch.equal(y, full_y[:128])
    assert sorted(p.name for p in fm_slice.iterdir()) == sorted(
        ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])


# ------------------------------------------------------------------ through the real CLI


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # one intra-op thread, as in the suite (tests/conftest.py): on a shared 2-core machine two
    # spinning OpenMP threads made this 5-step run 6x slower
    env = {**os.environ, "COLUMNS": "100", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*US3L, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_and_eval_on_a_slice_through_the_cli(fm_slice, tmp_path):
    proc = _cli(["train", "--recipe", "fashion_mnist", "--data", "fashion-mnist", "--data-root", str(fm_slice),
                 "--epochs", "1", "--max-steps-per-epoch", "5", "--batch-size", "32", "--out", "run", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from us3l.core.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.dataset == {"name": "fashion-mnist", "root": str(fm_slice), "image_size": 28}
    assert ckpt.arch_kwargs.get("input_size") == 28
    proc = _cli(["eval", "run/checkpoint.pt", "--widths", "0.25,1.0", "--calib-batches", "2", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["width"] for r in rows] == [0.25, 1.0] and all(0.1 < r["knn"] <= 1.0 for r in rows)  # > chance
    written = json.loads((tmp_path / "run" / "accuracy.json").read_text())
    assert {r["details"]["dataset"]["name"] for r in written["results"]} == {"fashion-mnist"}


def test_corrupt_idx_header_exits_2_with_one_line(fm_slice, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in fm_slice.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    raw = bytearray((bad / "train-images-idx3-ubyte").read_bytes())
    raw[2] = 0x42  # unknown IDX type code
    (bad / "train-images-idx3-ubyte").write_bytes(bytes(raw))
    proc = _cli(["train", "--data", "fashion-mnist", "--data-root", str(bad), "--epochs", "1", "--out", "r"], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert _error_line(proc.stderr).endswith("type code 0x42; valid: 0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x0e")
    assert "bad/train-images-idx3-ubyte" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r" / "checkpoint.pt").exists()
    proc = _cli(["train", "--data", "fashion-mnist", "--data-root", str(tmp_path / "none"), "--out", "r"], tmp_path)
    assert proc.returncode == 2 and "apt-get install dataset-fashion-mnist" in _error_line(proc.stderr)


def _error_line(stderr: str) -> str:
    """The one error line; besides it stderr holds at most the progress bar's last state."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and all(ln.startswith("training ") or " elapsed" in ln for ln in lines if ln not in errors), stderr
    return errors[0]
