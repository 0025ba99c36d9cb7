"""The streaming input pipeline (image files), training config files and visibility.

Must-shows of the data issue: a synthetic folder with bad files and every image mode trains with
``--workers 2``, evaluates (kNN + linear) and exports; two-view crops come from the full image;
``--print-config`` round-trips and a typo'd key is one line with exit 2; two torchrun processes
see disjoint shards each epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefolder_fixtures import BAD_FILES, make_folder
from us3l.core.errors import ConfigError, DataError
from us3l.core.images import BadImageError, list_split, load_center
from us3l.trainer import pipeline
from us3l.trainer.config import TrainConfig

US3L = [sys.executable, "-m", "us3l.cli.main"]
TINY = ["--set", "proj_hidden_dim=32", "--set", "proj_out_dim=16", "--set", "pred_hidden_dim=32",
        "--set", "tensorboard=false", "--set", "collapse_batch=16"]


def _run(args, cwd, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([*US3L, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("images"))


def test_listing_decoding_and_bad_files(folder, tmp_path):
    files = list_split(folder, "train")
    assert files.labelled and files.classes == ("a", "b") and len(files) == 27
    assert len(list_split(folder, "val")) == 8
    ok = [p for p in files.paths if not p.endswith(("corrupt.jpg", "truncated.jpg", "bomb.png"))]
    for path in ok:  # grayscale, CMYK, RGBA, palette, non-square: all become RGB
        assert load_center(path, 12).shape == (12, 12, 3)
    reasons = {}
    for bad in BAD_FILES:
        with pytest.raises(BadImageError) as exc:
            pipeline.crop_views(str(folder / bad), 12, (0.2, 1.0), np.random.default_rng(0))
        reasons[bad] = exc.value.reason
    assert "not an image" in reasons[BAD_FILES[0]] and "truncated" in reasons[BAD_FILES[1]]
    assert "decompression bomb" in reasons[BAD_FILES[2]]
    # a flat folder is unlabelled; a CSV list with class names is labelled; a text list without labels is not
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in ok[:3]:
        (flat / Path(p).name).write_bytes(Path(p).read_bytes())
    assert not list_split(flat, "train").labelled
    (tmp_path / "train.csv").write_text("path,label\n" + "".join(f"{p},{'cat' if i % 2 else 'dog'}\n"
                                                                 for i, p in enumerate(ok[:4])))
    listed = list_split(tmp_path / "train.csv", "train")
    assert listed.classes == ("cat", "dog") and listed.labels.tolist() == [1, 0, 1, 0]
    (tmp_path / "train.txt").write_text("\n".join(ok[:2]) + "\n")
    assert not list_split(tmp_path / "train.txt", "train").labelled
    with pytest.raises(DataError, match="no evaluation list"):
        list_split(tmp_path / "train.txt", "val")


@pytest.mark.parametrize("decoder", ["pillow", "fast"])
def test_two_view_crops_come_from_the_full_image(tmp_path, monkeypatch, request, decoder):
    """A wide image whose left and right borders are a unique colour (red): a centre crop of the
    decoded image (the old pre-cut pipeline) never shows it, the crops drawn on the full image do.
    Both decoders: Pillow, and simplejpeg + OpenCV (the ``fast`` extra) when installed."""
    from PIL import Image

    monkeypatch.setenv("US3L_DECODER", "pillow" if decoder == "pillow" else "auto")
    pipeline.fast_backend.cache_clear()
    request.addfinalizer(pipeline.fast_backend.cache_clear)  # later tests see the environment's decoder
    if decoder == "fast" and pipeline.fast_backend() is None:
        pytest.skip("the 'fast-decode' extra (simplejpeg, opencv-python-headless) is not installed")
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :, 1] = 160  # green everywhere
    pixels[:, :10] = pixels[:, -10:] = (255, 0, 0)  # red side borders, outside the centre 40x40
    Image.fromarray(pixels).save(tmp_path / "border.jpg", quality=95)
    path = str(tmp_path / "border.jpg")
    if decoder == "fast":
        rng = np.random.default_rng(0)
        assert pipeline._fast_views(path, 16, (0.2, 1.0), rng, 2) is not None  # the fast path is the one used

    def red(view):
        return bool(((view[..., 0] > 200) & (view[..., 1] < 60)).any())

    assert not red(load_center(path, 16))
    data = pipeline.TwoViewFiles([path], 16, (0.2, 1.0), seed=0)
    views = [v for epoch in range(60) for v in data[(0, epoch)][0]]
    share = sum(red(v) for v in views) / len(views)
    assert share > 0.3, share
    # reproducible per (seed, epoch, index), whatever process draws it
    assert np.array_equal(data[(0, 3)][0], data[(0, 3)][0]) and not np.array_equal(data[(0, 3)][0], data[(0, 4)][0])


def test_folder_trains_with_workers_evaluates_and_exports(folder, tmp_path):
    run = tmp_path / "run"
    train = _run(["train", "--data", "imagefolder", "--data-root", str(folder), "--image-size", "16", "--epochs", "1",
                  "--batch-size", "8", "--workers", "2", "--threads", "1", "--out", str(run), *TINY,
                  "--set", "drop_last=false"], tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "at 16x16 px" in train.stderr and "2 loader process(es)" in train.stderr
    assert f"training us_resnet_mini on imagefolder:{folder.name}" in train.stderr  # plain lines: not a TTY
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["bad_images"] == 3 and record["steps"] == 4 and 0 <= record["data_wait"] <= 1
    assert "skipping bad image" in train.stderr and (run / "config.toml").is_file()
    ev = _run(["eval", str(run / "checkpoint.pt"), "--method", "both", "--widths", "0.5", "--workers", "2",
               "--batch-size", "8", "--calib-batches", "2", "--json"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    rows = json.loads(ev.stdout)
    assert [r["width"] for r in rows] == [0.5] and all(0 <= r["knn"] <= 1 and 0 <= r["linear"] <= 1 for r in rows)
    ex = _run(["export", str(run / "checkpoint.pt"), "--widths", "0.5", "--out", str(tmp_path / "onnx")], tmp_path)
    assert ex.returncode == 0, ex.stderr[-3000:]
    assert list((tmp_path / "onnx").glob("*.onnx"))


def test_print_config_round_trips_and_bad_keys_are_one_line(tmp_path, message_lines):
    first = _run(["train", "--recipe", "cifar100_r18_simclr", "--print-config"], tmp_path)
    assert first.returncode == 0, first.stderr
    (tmp_path / "r.toml").write_text(first.stdout)
    again = _run(["train", "--config", "r.toml", "--print-config"], tmp_path)
    assert again.returncode == 0 and again.stdout == first.stdout
    (tmp_path / "typo.toml").write_text(first.stdout.replace("\nlr = ", "\nlrr = "))
    typo = _run(["train", "--config", "typo.toml", "--print-config"], tmp_path)
    assert typo.returncode == 2 and typo.stdout == ""
    assert len(message_lines(typo.stderr)) == 1 and "unknown key 'lrr' (did you mean 'lr'?)" in typo.stderr
    wrong = _run(["train", "--config", "r.toml", "--set", "epochs=many", "--print-config"], tmp_path)
    assert wrong.returncode == 2 and "'epochs' must be an integer" in wrong.stderr
    assert len(message_lines(wrong.stderr)) == 1


def test_config_resolution_order_and_resume_base(tmp_path):
    from us3l.trainer.config_file import save_resolved, to_toml
    from us3l.trainer.recipes import resolve

    (tmp_path / "c.toml").write_text('recipe = "fashion_mnist"\nepochs = 2\narch_kwargs = { }\n')
    cfg = resolve(None, tmp_path / "c.toml", ["lr=0.3", "image_size=none", "distill_layers=[]"], {"seed": 5})
    assert (cfg.data, cfg.epochs, cfg.lr, cfg.image_size, cfg.seed) == ("fashion-mnist", 2, 0.3, None, 5)
    with pytest.raises(ConfigError, match="contradicts"):
        resolve("digits", tmp_path / "c.toml")
    with pytest.raises(ConfigError, match="'epochs' cannot be unset"):
        resolve(None, None, ["epochs=none"])
    saved = TrainConfig(epochs=3, lr=0.2, workers=1, out_dir=str(tmp_path))
    save_resolved(saved, tmp_path)
    assert resolve(None, None, [], {"resume": True}, resume_dir=tmp_path) == saved.replace(resume=True)
    assert resolve(None, tmp_path / "config.toml") == saved
    assert "# image_size = (unset)" in to_toml(saved)


def test_on_bad_image_fail_is_one_line(folder, tmp_path):
    from us3l.trainer.loop import run_training

    cfg = TrainConfig(data="imagefolder", data_root=str(folder), image_size=12, batch_size=27, epochs=1, workers=0,
                      on_bad_image="fail", tensorboard=False, proj_hidden_dim=16, proj_out_dim=8, pred_hidden_dim=16,
                      collapse_batch=8, out_dir=str(tmp_path))
    with pytest.raises(DataError) as exc:
        run_training(cfg)
    text = str(exc.value)
    assert "\n" not in text and text.startswith("bad image ") and "--on-bad-image skip" in text
    assert not (tmp_path / "checkpoint.pt").exists()


def test_streamed_resume_is_exact(folder, tmp_path):
    """Crops depend on (seed, epoch, index) only: one run of two epochs equals one epoch + resume + one."""
    from us3l.trainer.loop import Trainer, run_training

    base = TrainConfig(data="imagefolder", data_root=str(folder), image_size=12, batch_size=8, epochs=2,
                       max_steps_per_epoch=2, workers=0, tensorboard=False, threads=1, proj_hidden_dim=16,
                       proj_out_dim=8, pred_hidden_dim=16, collapse_batch=8, log_interval=1)
    straight = run_training(base.replace(out_dir=str(tmp_path / "a")))
    split_cfg = base.replace(out_dir=str(tmp_path / "b"))
    Trainer(split_cfg).fit(until_epoch=1)
    resumed = run_training(split_cfg.replace(resume=True, workers=1))  # another worker count: the same crops
    a, b = (torch.load(p, weights_only=True)["model"] for p in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_knn_bank_is_float16_and_chunked(monkeypatch):
    from us3l.trainer import probes

    g = torch.Generator().manual_seed(0)
    train_f, test_f = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    train_y, test_y = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (50,), generator=g)
    whole = probes.knn_accuracy(train_f, train_y, test_f, test_y, k=7)
    monkeypatch.setattr(probes, "KNN_BANK_CHUNK", 32)
    monkeypatch.setattr(probes, "KNN_QUERY_CHUNK", 8)
    assert probes.knn_accuracy(train_f, train_y, test_f, test_y, k=7) == whole
    bank = torch.nn.functional.normalize(train_f, dim=1).half()
    assert probes.knn_accuracy(bank, train_y, test_f, test_y, k=7) == whole


def test_plain_progress_lines_when_not_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    from us3l.api.progress import progress_bar

    out = io.StringIO()
    monkeypatch.setenv("US3L_PROGRESS_SECONDS", "1000")
    with progress_bar("training x on y", console=Console(file=out, force_terminal=False)) as update:
        for i in range(1, 11):
            update(i, 10, f"loss {i}")
    lines = out.getvalue().splitlines()
    assert lines == ["training x on y: 1/10, 0:00 elapsed; loss 1", "training x on y: 10/10, 0:00 elapsed, eta 0:00; loss 10"]


SHARDS = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from us3l.core.images import list_split
    from us3l.trainer.pipeline import TrainStream

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    files = list_split(sys.argv[1], "train")
    stream = TrainStream(files, 8, (0.2, 1.0), seed=3, rank=rank, world=dist.get_world_size(), batch=4, steps=100,
                         drop_last=False, workers=1, prefetch=2, pin=False)
    seen = {e: [int(i) for b in stream.epoch(e) for i in b["ids"].tolist() + [j for j, _ in b["bad"]]]
            for e in range(2)}
    json.dump(seen, open(f"{sys.argv[2]}/rank{rank}.json", "w"))
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_torchrun_ranks_see_disjoint_shards(folder, tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(SHARDS)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(folder), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    for epoch in ("0", "1"):
        assert len(r0[epoch]) == len(r1[epoch]) == 27 // 2
        assert not set(r0[epoch]) & set(r1[epoch])  # disjoint shards
        assert len(set(r0[epoch]) | set(r1[epoch])) == 26  # 27 images cut to a multiple of 2
    assert r0["0"] != r0["1"]  # set_epoch: a new permutation each epoch
