"""Fine-tuning streams its data (issue 24, item 4): image files go through the training pipeline's
loader processes (full-image random resized crops, bad files skipped), nothing loads a whole
split, and the number of loader processes does not change what is trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagefolder_fixtures import BAD_FILES, make_folder
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.data import DatasetSpec
from us3l.core.errors import DataError
from us3l.core.models import get_model
from us3l.trainer import pipeline
from us3l.trainer.finetune import FinetuneConfig, TaskData, _crop, resolve_augment, run_finetune

TINY = {"epochs": 1, "max_steps_per_epoch": 2, "calib_batches": 1, "batch_size": 8, "eval_batch_size": 8,
        "widths": "0.25,1.0"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def ssl_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ssl") / "checkpoint.pt"
    save_checkpoint(Checkpoint.from_model(get_model("us_resnet_mini"), method="us3l",
                                          dataset=DatasetSpec("digits").to_dict()), path)
    return path


def _no_whole_split(monkeypatch):
    """Fail the test if anything decodes a whole image folder into memory."""
    from us3l.core import data

    def refuse(*args, **kwargs):
        raise AssertionError("an image folder was loaded whole")

    monkeypatch.setattr(data, "_folder_split", refuse)


def test_image_folder_finetune_streams_and_workers_do_not_change_the_result(folder, ssl_ckpt, tmp_path, monkeypatch,
                                                                            caplog):
    _no_whole_split(monkeypatch)
    common = dict(checkpoint=str(ssl_ckpt), dataset="imagefolder", data_root=str(folder), image_size=16, **TINY)
    runs = {}
    for workers in (0, 2):
        with caplog.at_level("WARNING"):
            runs[workers] = run_finetune(FinetuneConfig(out_dir=str(tmp_path / f"w{workers}"), workers=workers,
                                                        **common))
    a, b = (load_checkpoint(runs[w].checkpoint) for w in (0, 2))
    assert a.model.keys() == b.model.keys() and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert [r["top1"] for r in runs[0].rows] == [r["top1"] for r in runs[2].rows]
    assert a.extra["task"]["classes"] == ["a", "b"] and a.extra["task"]["input_size"] == 16
    assert a.train_config["finetune"]["augment"] == "auto" and a.bank_widths() == [0.25, 1.0]
    assert "skipping bad image" in caplog.text  # the corrupt / truncated / bomb files of train/
    # a notice, not an error: the SSL checkpoint was trained on digits
    assert runs[0].notices == [f"fine-tuning on imagefolder ({folder.name}) at 16 px, while the SSL checkpoint was "
                               "trained on digits at 16 px: its features were learned on other images"]
    # fail: one line naming the file
    with pytest.raises(DataError, match="bad image .*(corrupt|truncated|bomb)"):
        run_finetune(FinetuneConfig(out_dir=str(tmp_path / "fail"), workers=0, on_bad_image="fail",
                                    **{**common, "max_steps_per_epoch": None}))


def test_task_data_batches_are_full_image_crops_with_their_labels(folder):
    cfg = FinetuneConfig(checkpoint="unused", batch_size=8, workers=0, eval_batch_size=8, calib_batches=1)
    spec = DatasetSpec("imagefolder", str(folder), 16)
    data = TaskData(spec, cfg)
    assert data.augment == "crop" and data.n_train == 27 and data.steps_per_epoch == 4
    seen = []
    for x, y in data.epoch(0, torch.Generator().manual_seed(0)):
        assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and len(x) == len(y)
        seen += y.tolist()
    assert len(seen) == 27 - len(BAD_FILES) and sorted(set(seen)) == [0, 1] and data.bad_count == len(BAD_FILES)
    # the label travels with its file: class a is reddish, class b bluish (R - B of the mean colour;
    # the grayscale files carry no colour)
    files = data.stream.files
    items = pipeline.TaskFiles(files.paths, 16, (0.25, 1.0), 0, "crop")
    checked = 0
    for index in range(len(files)):
        view, _, reason = items[(index, 0)]
        red = 0.0 if reason is not None else float(view[..., 0].mean()) - float(view[..., 2].mean())
        if abs(red) > 1:
            assert (red > 0) == (files.labels[index] == 0)
            checked += 1
    assert checked >= 15
    # another epoch draws other crops; the same key the same crop
    good = next(i for i in range(len(files)) if items[(i, 0)][2] is None)
    assert np.array_equal(items[(good, 0)][0], items[(good, 0)][0])
    assert not np.array_equal(items[(good, 0)][0], items[(good, 1)][0])
    # evaluation data: the centre view, batch by batch
    assert sum(len(y) for _, y in data.test) == 8 and 5 <= sum(len(x) for x in data.calib) <= 8  # one batch, bad files dropped


def test_augment_resolution_and_in_memory_crop():
    assert resolve_augment("auto", DatasetSpec("imagefolder", "x")) == "crop"
    assert resolve_augment("auto", DatasetSpec("digits")) == "shift"
    assert resolve_augment("none", DatasetSpec("imagefolder", "x")) == "none"
    # frozen-backbone per-width heads train on the evaluation view, as the linear probe; a choice is kept
    assert resolve_augment("auto", DatasetSpec("digits"), probes=True) == "none"
    assert resolve_augment("auto", DatasetSpec("imagefolder", "x"), probes=True) == "none"
    assert resolve_augment("shift", DatasetSpec("digits"), probes=True) == "shift"
    # a crop of the whole image with no flip is the identity resize; the crop box is honoured
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = _crop(x, 8, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 8, 8)
    for i in range(2):  # either the image or its mirror image
        assert torch.allclose(out[i], x[i], atol=1e-4) or torch.allclose(out[i], x[i].flip(-1), atol=1e-4)
    small = _crop(x, 16, (0.1, 0.3), torch.Generator().manual_seed(1))
    assert small.shape == (2, 3, 16, 16) and not torch.allclose(small, torch.nn.functional.interpolate(x, 16))


def test_digits_finetune_with_crop_augmentation(ssl_ckpt, tmp_path):
    out = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path), augment="crop",
                                      crop_scale_min=0.5, **TINY))
    assert [r["width"] for r in out.rows] == [0.25, 1.0] and all(0 <= r["top1"] <= 1 for r in out.rows)


def test_api_calibration_on_an_image_folder_streams(folder, ssl_ckpt, monkeypatch):
    from us3l.api import load

    _no_whole_split(monkeypatch)
    model = load(ssl_ckpt)
    model.calibrate(0.5, f"imagefolder:{folder}", batches=2, batch_size=4)
    assert 0.5 in model.calibrated_widths()


def test_a_width_below_the_ssl_knn_is_a_notice(ssl_ckpt, tmp_path):
    import json

    from us3l.core.checkpoint import load_checkpoint

    ssl = tmp_path / "ssl" / "checkpoint.pt"
    ssl.parent.mkdir()
    ssl.write_bytes(ssl_ckpt.read_bytes())
    digest = load_checkpoint(ssl).content_hash
    (ssl.parent / "accuracy.json").write_text(json.dumps({"format": 2, "checkpoint": digest, "results": [
        {"width": w, "knn": 0.999, "protocol": "knn", "outputs": "features", "source": "pytorch", "sha256": digest,
         "precision": "fp32", "details": {"dataset": {"name": "digits"}}} for w in (0.25, 1.0)]}))
    out = run_finetune(FinetuneConfig(checkpoint=str(ssl), out_dir=str(tmp_path / "ft"), **TINY))
    assert out.notices == [f"width {w}: fine-tuned top-1 {100 * r['top1']:.1f} % is below the SSL checkpoint's kNN "
                           "99.9 % at that width (under-trained? try more --epochs)"
                           for w, r in zip(("0.25", "1.0"), out.rows)]
    same = run_finetune(FinetuneConfig(checkpoint=str(ssl_ckpt), out_dir=str(tmp_path / "plain"), **TINY))
    assert same.notices == []  # same data, no kNN table beside it: nothing to say


def test_rows_fill_one_block_in_order_and_overflow_is_kept():
    from us3l.trainer.probes import RowBlock

    rows = RowBlock(5)  # the stream said 5 images; one bad file gives 4, a miscount gives more
    rows.add(torch.ones(2, 3), torch.tensor([0, 1]))
    rows.add(torch.full((2, 3), 2.0), torch.tensor([2, 3]))
    f, y = rows.result()
    assert f.shape == (4, 3) and y.tolist() == [0, 1, 2, 3] and rows.block is not None
    rows.add(torch.full((3, 3), 3.0), torch.tensor([4, 5, 6]))  # past the total: kept after the block
    f, y = rows.result()
    assert y.tolist() == [0, 1, 2, 3, 4, 5, 6] and f[-1, 0] == 3.0
    with pytest.raises(DataError, match="no readable images"):
        RowBlock(3).result()
