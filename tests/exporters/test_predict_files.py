"""``us3l predict`` reads files as the training loaders do (issue 24, item 3): on a folder holding a
semi-transparent RGBA PNG, a 16-bit PNG, a CMYK JPEG, an EXIF-rotated JPEG and a corrupt file, the
logits of every readable file equal the artifact's logits on the evaluation loader's tensor of that
file; the corrupt one is named in one warning line and the rest are still printed; paths are shown
relative to the directory argument; ``--json -o FILE`` writes the predictions."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from us3l.api import export, predict
from us3l.cli.main import app
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.models import get_model

SIZE = 16


def _png16(path, arr: np.ndarray) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w = arr.shape
    raw = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A two-class image-folder classifier (fine-tuned briefly) exported with logits at width 0.25."""
    from us3l.trainer.finetune import FinetuneConfig, run_finetune

    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        for cls, base in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
            (root / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                px = np.clip(np.array(base) + rng.normal(0, 30, (24, 30, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(root / "data" / split / cls / f"{i}.jpg", quality=90)
    torch.manual_seed(0)
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini"), method="us3l",
                                          dataset=DatasetSpec("digits").to_dict()), root / "ssl" / "checkpoint.pt")
    ft = run_finetune(FinetuneConfig(checkpoint=str(root / "ssl" / "checkpoint.pt"), out_dir=str(root / "ft"),
                                     dataset="imagefolder", data_root=str(root / "data"), image_size=SIZE, epochs=1,
                                     max_steps_per_epoch=2, batch_size=8, calib_batches=1, eval_batch_size=8,
                                     widths="0.25", workers=0))
    art = export(ft.checkpoint, "0.25", out=root / "onnx", outputs="logits").artifacts[0]
    return root, ft, art


@pytest.fixture(scope="module")
def odd_folder(classifier):
    root = classifier[0] / "odd"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (20, 26, 4), dtype=np.uint8)
    rgba[..., 3] = rng.integers(40, 200, (20, 26))  # semi-transparent everywhere
    Image.fromarray(rgba, "RGBA").save(root / "a" / "000.png")
    _png16(root / "b" / "000.png", rng.integers(0, 65536, (22, 18), dtype=np.uint16))
    Image.fromarray(rng.integers(0, 256, (19, 25, 3), dtype=np.uint8)).convert("CMYK").save(root / "a" / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (18, 30, 3), dtype=np.uint8)).save(root / "b" / "rotated.jpg",
                                                                           exif=exif.tobytes(), quality=95)
    (root / "b" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all" * 4)
    return root


def _loader_tensors(folder, files):
    """The evaluation loader's tensors (EvalStream over a file list of ``files``), keyed by path."""
    from us3l.trainer.pipeline import EvalStream

    listing = folder.parent / "odd-train.csv"
    listing.write_text("path,label\n" + "".join(f"{f},{i}\n" for i, f in enumerate(files)))  # label = index
    stream = EvalStream(DatasetSpec("imagefolder", str(listing), SIZE), "train", batch_size=3, workers=0)
    out = {}
    for x, labels in stream:
        for row, i in zip(x, labels.tolist()):
            out[str(files[i])] = row.numpy()
    return out


def test_predict_equals_the_loaders_tensors_and_names_the_corrupt_file(classifier, odd_folder):
    import onnxruntime as ort

    from us3l.core.preprocess import image_files

    _, _, art = classifier
    files = image_files(odd_folder)
    assert [f.relative_to(odd_folder).as_posix() for f in files] == ["a/000.png", "a/cmyk.jpg", "b/000.png",
                                                                      "b/corrupt.jpg", "b/rotated.jpg"]
    res = predict(art.path, odd_folder, top_k=2)
    assert [p.name for p in res.predictions] == ["a/000.png", "a/cmyk.jpg", "b/000.png", "b/rotated.jpg"]
    assert [s.name for s in res.skipped] == ["b/corrupt.jpg"] and res.skipped[0].reason
    loader = _loader_tensors(odd_folder, files)
    assert sorted(loader) == sorted(str(p.image) for p in res.predictions)  # the loader skips the same file
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    for p in res.predictions:
        want = sess.run(None, {"input": loader[str(p.image)][None]})[0][0]
        assert np.abs(np.asarray(p.logits) - want).max() <= 1e-6, p.name
    # the PyTorch classifier agrees on the same tensors (the file was exported from it)
    from us3l.core.bn import load_bn_stats
    from us3l.core.context import use_width
    from us3l.core.taskmodel import static_head

    ckpt = load_checkpoint(classifier[1].checkpoint)
    net = ckpt.build_model().eval()  # the backbone, then width 0.25's own head (finetune's default: one per width)
    load_bn_stats(net, ckpt.bn_stats_for(0.25), 0.25)
    head = static_head(ckpt, 0.25, int(net.feature_dim(0.25)))
    with torch.no_grad(), use_width(net, 0.25):
        ref = head(net(torch.from_numpy(np.stack([loader[str(p.image)] for p in res.predictions])))).numpy()
    assert np.abs(np.asarray([p.logits for p in res.predictions]) - ref).max() < 1e-4


def test_predict_cli_warns_writes_json_and_fails_on_request(classifier, odd_folder, tmp_path, message_lines):
    _, _, art = classifier
    runner = CliRunner()
    table = runner.invoke(app, ["predict", str(art.path), str(odd_folder)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "skipped b/corrupt.jpg" in table.output and "a/000.png" in table.output and "b/000.png" in table.output
    assert table.output.count("warning:") == 1 and "Traceback" not in table.output
    out = tmp_path / "sub" / "pred.json"
    (tmp_path / "sub").mkdir()
    done = runner.invoke(app, ["predict", str(art.path), str(odd_folder), "--json", "-o", str(out)])
    assert done.exit_code == 0, done.output
    data = json.loads(out.read_text())
    assert [p["name"] for p in data["predictions"]] == ["a/000.png", "a/cmyk.jpg", "b/000.png", "b/rotated.jpg"]
    assert [s["name"] for s in data["skipped"]] == ["b/corrupt.jpg"] and len(data["predictions"][0]["logits"]) == 2
    fail = runner.invoke(app, ["predict", str(art.path), str(odd_folder), "--on-bad-image", "fail"])
    assert fail.exit_code == 2 and "corrupt.jpg" in fail.output and "--on-bad-image skip" in fail.output
    assert "Traceback" not in fail.output and len(message_lines(fail.output)) == 1
    only_bad = runner.invoke(app, ["predict", str(art.path), str(odd_folder / "b" / "corrupt.jpg")])
    assert only_bad.exit_code == 2 and "no readable image" in only_bad.output
