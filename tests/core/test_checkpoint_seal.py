"""Issue 15, class 5: the whole checkpoint file is sealed (sha256 in the zip comment), so one flipped
byte anywhere (weights, BN bank, heads, optimizer state, metadata, the archive's own records) is
refused on load, before anything is unpickled."""

from __future__ import annotations

import random

import pytest
import torch

from us3l.core.bn import bn_stats
from us3l.core.checkpoint import Checkpoint, file_seal, load_checkpoint, save_checkpoint
from us3l.core.errors import CheckpointError
from us3l.core.models import get_model

MARK_BN = 1234.5  # a stored BN mean, found in the file by its bytes
MARK_HEAD = 4321.25
MARK_TEXT = "us3l-seal-test-metadata"


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    model = get_model("us_resnet_mini")
    stats = bn_stats(model, 0.5)
    first = next(iter(stats))
    stats[first]["mean"] = torch.full_like(stats[first]["mean"], MARK_BN)
    ckpt = Checkpoint.from_model(model, method="us3l", epoch=3, extra={"note": MARK_TEXT},
                                 training={"heads": {"proj.weight": torch.full((16, 32), MARK_HEAD)},
                                           "optimizer": {"state": {0: {"momentum_buffer": torch.randn(64)}}}})
    ckpt.add_bn_stats(0.5, stats)
    path = tmp_path_factory.mktemp("seal") / "ckpt.pt"
    save_checkpoint(ckpt, path)
    return path


def _flip(src, dst, offset: int) -> None:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))


def test_sealed_file_loads_and_torch_still_reads_it(sealed):
    recorded, actual = file_seal(sealed)
    assert recorded == actual and len(actual) == 64
    assert load_checkpoint(sealed).extra["note"] == MARK_TEXT
    assert torch.load(sealed, weights_only=True)["epoch"] == 3  # the seal is a plain zip comment


def test_a_byte_flipped_at_20_random_offsets_is_always_detected(sealed, tmp_path):
    size = sealed.stat().st_size
    offsets = random.Random(15).sample(range(size), 20)
    bad = tmp_path / "bad.pt"
    for offset in offsets:
        _flip(sealed, bad, offset)
        with pytest.raises(CheckpointError, match="corrupt"):
            load_checkpoint(bad)


@pytest.mark.parametrize("what", ["bn bank", "heads", "metadata", "seal", "end record"])
def test_flips_in_each_part_of_the_payload_are_detected(sealed, tmp_path, what):
    data = sealed.read_bytes()
    offset = {
        "bn bank": data.find(torch.tensor([MARK_BN]).numpy().tobytes()),
        "heads": data.find(torch.tensor([MARK_HEAD]).numpy().tobytes()),
        "metadata": data.find(MARK_TEXT.encode()),
        "seal": len(data) - 10,
        "end record": len(data) - 76 - 2,  # the comment length
    }[what]
    assert offset > 0
    bad = tmp_path / "bad.pt"
    _flip(sealed, bad, offset)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)


def test_format_1_files_still_load_with_their_weights_checked(sealed, tmp_path, caplog):
    data = torch.load(sealed, weights_only=True)
    data["format_version"] = 1
    old = tmp_path / "old.pt"
    torch.save(data, old)  # as the previous version wrote it: no seal
    with caplog.at_level("WARNING"):
        assert load_checkpoint(old).epoch == 3
    assert "predates whole-file integrity hashes" in caplog.text
