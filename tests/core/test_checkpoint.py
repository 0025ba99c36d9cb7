"""Checkpoints: round trip, atomic writes, refusal of code-carrying pickles, one-line errors."""

import os
import pickle

import pytest
import torch

from us3l.core.bn import bn_stats, calibrate_bn
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.context import use_width
from us3l.core.errors import CheckpointError
from us3l.core.models import get_model


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    net = get_model("us_resnet_mini")
    ckpt = Checkpoint.from_model(net, method="us3l", epoch=3, train_config={"lr": 0.1}, dataset={"name": "digits"})
    calibrate_bn(net, [torch.randn(8, 3, 16, 16)], 0.5)
    ckpt.add_bn_stats(0.5, bn_stats(net, 0.5))
    path = tmp_path / "run" / "model.pt"
    save_checkpoint(ckpt, path)
    return net, ckpt, path


def test_round_trip_gives_identical_outputs(saved):
    net, ckpt, path = saved
    loaded = load_checkpoint(path)
    assert (loaded.arch, loaded.method, loaded.epoch, loaded.dataset) == ("us_resnet_mini", "us3l", 3, {"name": "digits"})
    assert loaded.content_hash == ckpt.content_hash and len(loaded.content_hash) == 64
    assert loaded.bank_widths() == [0.5] and loaded.versions["torch"] == torch.__version__
    rebuilt = loaded.build_model()
    x = torch.randn(4, 3, 16, 16)
    net.train(), rebuilt.train()
    for w in (0.25, 0.5, 1.0):
        with use_width(net, w), use_width(rebuilt, w), torch.no_grad():
            torch.testing.assert_close(net(x), rebuilt(x), rtol=0, atol=0)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/us3l_pwned",))


def test_pickle_carrying_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"magic": "us3l-deploy-checkpoint", "payload": _Evil()}, path)
    if os.path.exists("/tmp/us3l_pwned"):
        os.remove("/tmp/us3l_pwned")
    with pytest.raises(CheckpointError, match="execute code"):
        load_checkpoint(path)
    assert not os.path.exists("/tmp/us3l_pwned")


def test_truncated_and_corrupt_files_give_one_line(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    for bad in (cut, junk, tmp_path / "missing.pt"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        assert "\n" not in str(info.value)


def test_foreign_file_and_tampered_weights_are_refused(saved, tmp_path):
    _, ckpt, path = saved
    foreign = tmp_path / "ref.pth.tar"
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(1)}}, foreign)
    with pytest.raises(CheckpointError, match="us3l import"):
        load_checkpoint(foreign)
    data = torch.load(path, weights_only=True)
    data["model"]["conv1.weight"] += 1
    tampered = tmp_path / "tampered.pt"
    torch.save(data, tampered)  # re-saved without the whole-file seal
    with pytest.raises(CheckpointError, match="integrity seal is missing"):
        load_checkpoint(tampered)
    data["format_version"] = 1  # a file from before the seal: only its weights hash can be checked
    torch.save(data, tampered)
    with pytest.raises(CheckpointError, match="content hash"):
        load_checkpoint(tampered)


def test_mismatched_weights_list_the_keys(saved):
    _, ckpt, _ = saved
    ckpt.model.pop("conv1.weight")
    with pytest.raises(CheckpointError, match="conv1.weight"):
        ckpt.build_model()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    net = get_model("us_resnet_mini")
    ckpt = Checkpoint.from_model(net)
    target = tmp_path / "model.pt"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, target)
    assert list(tmp_path.iterdir()) == []


def test_plain_text_file_is_called_corrupt_not_dangerous(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("hello world\n" * 10)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(text)
    assert "notes.pt is not a PyTorch checkpoint (120 bytes, starts with 'hello world\\nhell')" in str(info.value)
    assert "execute" not in str(info.value)  # issue 25: not the code-carrying pickle's message
