"""Task models end to end (issue 13's must-shows): a fine-tuned digits classifier exported with
``--outputs logits`` matches PyTorch in ONNX Runtime; ``us3l predict`` on PNG files of held-out
digits gives PyTorch's top-1; ``--outputs stages`` has the slice's stage channels at batch 1 and 7;
``us3l pack`` writes a smaller directory from which export is byte-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from us3l.api import export, pack, predict
from us3l.cli.main import app
from us3l.core.bn import load_bn_stats
from us3l.core.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from us3l.core.context import use_width
from us3l.core.data import DIGITS_FILE, DatasetSpec, load_split
from us3l.core.errors import CheckpointError
from us3l.core.models import get_model
from us3l.core.slicing import channel_config, stage_channels
from us3l.core.taskmodel import build_classifier, static_head

WIDTHS = (0.25, 1.0)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A digits SSL-style checkpoint with resume state, and its fine-tuned task checkpoint (per-width heads)."""
    from us3l.trainer.finetune import FinetuneConfig, run_finetune

    root = tmp_path_factory.mktemp("task")
    torch.manual_seed(0)
    net = get_model("us_resnet_mini")
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3, 16, 16)).sum().backward()
    opt.step()  # momentum buffers: a checkpoint carrying optimizer state, as training writes
    ssl = Checkpoint.from_model(net, method="us3l", dataset=DatasetSpec("digits").to_dict(),
                                training={"optimizer": opt.state_dict(),
                                          "ema": {k: v.clone() for k, v in net.state_dict().items()}})
    save_checkpoint(ssl, root / "ssl" / "checkpoint.pt")
    out = run_finetune(FinetuneConfig(checkpoint=str(root / "ssl" / "checkpoint.pt"), out_dir=str(root / "ft"),
                                      epochs=1, max_steps_per_epoch=4, calib_batches=2, widths="0.25,1.0"))
    return root, out


@pytest.fixture(scope="module")
def logits_export(task):
    root, out = task
    return export(out.checkpoint, "0.25,1.0", out=root / "onnx", outputs="logits")


def _torch_logits(ckpt, width, x):
    """PyTorch's logits at ``width``: the backbone with the width's BN statistics, then the width's own head."""
    model = ckpt.build_model().eval()
    load_bn_stats(model, ckpt.bn_stats_for(width), width)
    with torch.no_grad(), use_width(model, width):
        return static_head(ckpt, width, model.feature_dim(width))(model(x)).numpy()


def test_finetuned_logits_match_pytorch_in_onnx_runtime(task, logits_export):
    import onnxruntime as ort

    _, out = task
    ckpt = load_checkpoint(out.checkpoint)
    x, _ = load_split(DatasetSpec("digits"), "test")
    for w in WIDTHS:
        art = logits_export.for_width(w)
        sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == (len(x), 10)
        assert np.abs(got - _torch_logits(ckpt, w, x)).max() <= 1e-4
        side = json.loads(art.sidecar.read_text())
        assert side["output"]["names"] == ["logits"] and side["classes"] == [str(i) for i in range(10)]
        assert {k: side["head"][k] for k in ("source", "kind", "width", "rule")} == {
            "source": "checkpoint", "kind": "per-width", "width": str(w), "rule": "exact"}  # the width's own head
        import onnx

        props = {p.key: p.value for p in onnx.load(str(art.path)).metadata_props}
        assert json.loads(props["us3l.classes"]) == side["classes"] and props["us3l.output_names"] == "logits"
        assert json.loads(props["us3l.mean"]) == side["input"]["normalization"]["mean"]
        assert json.loads(props["us3l.std"]) == side["input"]["normalization"]["std"]
        assert props["us3l.input_size"] == "16" and json.loads(props["us3l.preprocess"])["size"] == 16


def test_predict_on_png_digits_gives_pytorchs_top1(task, logits_export, tmp_path):
    from PIL import Image

    _, out = task
    ckpt = load_checkpoint(out.checkpoint)
    with np.load(DIGITS_FILE) as a:
        images, test_idx = a["images"], a["test_idx"][:12]
    files = []
    for i in test_idx:  # held-out digits as 8-bit grayscale PNG files at their native 8x8
        f = tmp_path / f"digit_{i}.png"
        Image.fromarray(np.round(images[i] * 255.0 / 16).astype(np.uint8), "L").save(f)
        files.append(f)
    pre = json.loads(logits_export.for_width(0.25).sidecar.read_text())["preprocess"]
    # PyTorch's view of the same files: the dataset's own resize (torch bilinear) and normalisation
    pix = torch.stack([torch.from_numpy(np.asarray(Image.open(f), dtype=np.float32) / 255.0) for f in files])[:, None]
    x = F.interpolate(pix, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1).expand(-1, 3, -1, -1)
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    from us3l.core.preprocess import load_image

    assert np.abs(np.stack([load_image(f, pre) for f in files]) - x.numpy()).max() < 1e-5
    for w in WIDTHS:
        ref = _torch_logits(ckpt, w, x).argmax(1)
        res = predict(logits_export.for_width(w).path, tmp_path, top_k=3)
        assert [p.image.name for p in res.predictions] == sorted(f.name for f in files)
        by_name = {p.image.name: p for p in res.predictions}
        assert [int(by_name[f.name].top[0].index) for f in files] == ref.tolist()
        assert all(len(p.top) == 3 and p.top[0].prob >= p.top[1].prob for p in res.predictions)
    cli = CliRunner().invoke(app, ["predict", str(logits_export.for_width(1.0).path), str(files[0]), "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output)["predictions"][0]["top"][0]["name"] in [str(i) for i in range(10)]
    bad = CliRunner().invoke(app, ["predict", str(logits_export.for_width(1.0).path), str(tmp_path / "none.png")])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output


def test_a_width_between_heads_exports_with_the_nearer_head(task, tmp_path):
    """Width 0.3 of a 0.25/1.0 ladder: the 0.25 head, on the first 32 of the 40 features; the sidecar says so."""
    import onnxruntime as ort

    _, out = task
    ckpt = load_checkpoint(out.checkpoint)
    logits = export(out.checkpoint, "0.3", out=tmp_path / "l", outputs="logits").artifacts[0]
    feats = export(out.checkpoint, "0.3", out=tmp_path / "f").artifacts[0]
    side = json.loads(logits.sidecar.read_text())["head"]
    assert {k: side[k] for k in ("kind", "width", "rule", "features_used")} == {
        "kind": "per-width", "width": "0.25", "rule": "nearest", "features_used": 32}
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16), dtype=np.float32)
    run = lambda a: ort.InferenceSession(str(a.path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    f = run(feats)
    assert f.shape == (5, 40)
    head = ckpt.extra["heads"]["0.25"]
    want = f[:, :32] @ head["weight"].numpy().T + head["bias"].numpy()
    assert np.abs(run(logits) - want).max() <= 1e-4


def test_frozen_per_width_heads_export_and_predict_with_the_standardisation_folded_in(task, tmp_path):
    """A frozen backbone's per-width heads train on standardised features; the saved (folded) head on
    raw features gives the same logits, and the ONNX classifier and ``predict`` use it."""
    import onnxruntime as ort
    from PIL import Image

    from us3l.trainer.finetune import FinetuneConfig, PerWidthHeads, run_finetune

    root, _ = task
    trained: dict[str, object] = {}  # the heads as trained (on standardised features) and the scalers: a spy
    fold = PerWidthHeads.fold

    def spy(self, scalers):
        trained.update(state=self.state(), scalers=dict(scalers))
        fold(self, scalers)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(PerWidthHeads, "fold", spy)
        out = run_finetune(FinetuneConfig(checkpoint=str(root / "ssl" / "checkpoint.pt"), out_dir=str(tmp_path / "ft"),
                                          freeze_backbone=True, epochs=1, max_steps_per_epoch=3, calib_batches=2,
                                          widths="0.25,1.0"))
    ckpt = load_checkpoint(out.checkpoint)
    state, scalers = trained["state"], trained["scalers"]
    with np.load(DIGITS_FILE) as a:
        images, test_idx = a["images"], a["test_idx"][:10]
    files = []
    for i in test_idx:
        f = tmp_path / "png" / f"digit_{i}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(np.round(images[i] * 255.0 / 16).astype(np.uint8), "L").save(f)
        files.append(f)
    x, _ = load_split(DatasetSpec("digits"), "test")
    res = export(out.checkpoint, "0.25,1.0", out=tmp_path / "onnx", outputs="logits")
    for w in WIDTHS:
        model = ckpt.build_model().eval()
        load_bn_stats(model, ckpt.bn_stats_for(w), w)
        mean, std = scalers[str(w)]
        with torch.no_grad(), use_width(model, w):
            feats = model(x)
        head = state[str(w)]
        want = (((feats - mean) / std) @ head["weight"].T + head["bias"]).numpy()  # the head as trained
        assert np.abs(_torch_logits(ckpt, w, x) - want).max() <= 1e-5  # the saved head reads raw features
        assert not torch.allclose(ckpt.extra["heads"][str(w)]["weight"], head["weight"])  # folded, not the same
        art = res.for_width(w)
        sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
        assert np.abs(sess.run(None, {"input": x.numpy()})[0] - want).max() <= 1e-4
        pre = json.loads(art.sidecar.read_text())["preprocess"]
        from us3l.core.preprocess import load_image

        px = torch.from_numpy(np.stack([load_image(f, pre) for f in files]))
        with torch.no_grad(), use_width(model, w):
            ref = ((((model(px) - mean) / std) @ head["weight"].T + head["bias"]).argmax(1)).tolist()
        by_name = {p.image.name: p for p in predict(art.path, tmp_path / "png").predictions}
        assert [int(by_name[f.name].top[0].index) for f in files] == ref


def test_a_shared_head_still_exports_as_one_slimmable_classifier(task, tmp_path):
    from us3l.trainer.finetune import FinetuneConfig, run_finetune

    root, _ = task
    shared = run_finetune(FinetuneConfig(checkpoint=str(root / "ssl" / "checkpoint.pt"), out_dir=str(tmp_path / "ft"),
                                         head="shared", epochs=1, max_steps_per_epoch=2, calib_batches=2,
                                         widths="0.25,1.0"))
    ckpt = load_checkpoint(shared.checkpoint)
    x, _ = load_split(DatasetSpec("digits"), "test")
    model = build_classifier(ckpt).eval()  # the slimmable fc is the shared head
    load_bn_stats(model, ckpt.bn_stats_for(0.25), 0.25)
    with torch.no_grad(), use_width(model, 0.25):
        assert np.abs(model(x[:8]).numpy() - _torch_logits(ckpt, 0.25, x[:8])).max() <= 1e-5
    art = export(shared.checkpoint, "0.25", out=tmp_path / "onnx", outputs="logits").artifacts[0]
    assert json.loads(art.sidecar.read_text())["head"]["kind"] == "shared"


def test_probs_rows_sum_to_one(task, tmp_path):
    import onnxruntime as ort

    _, out = task
    res = export(out.checkpoint, "0.25", out=tmp_path, outputs="probs", onnx_exporter="dynamo")  # Sequential: positional shapes
    sess = ort.InferenceSession(str(res.artifacts[0].path), providers=["CPUExecutionProvider"])
    p = sess.run(None, {"input": np.random.default_rng(0).standard_normal((3, 3, 16, 16), dtype=np.float32)})[0]
    assert np.allclose(p.sum(1), 1, atol=1e-5) and (p >= 0).all()


def test_stages_at_width_035_have_the_slice_stage_channels_and_run_at_batch_1_and_7(tmp_path):
    import onnxruntime as ort

    res = export("us_resnet18_cifar", "0.35", out=tmp_path, outputs="stages")
    art = res.artifacts[0]
    net = get_model("us_resnet18_cifar")
    want = stage_channels(channel_config(net, 0.35))[1:]  # layer1..layer4 (the first entry is the stem)
    sess = ort.InferenceSession(str(art.path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["C2", "C3", "C4", "C5"]
    for batch in (1, 7):
        outs = sess.run(None, {"input": np.zeros((batch, 3, 32, 32), np.float32)})
        assert [o.shape[1] for o in outs] == want and all(o.shape[0] == batch for o in outs)
        assert [o.shape[2] for o in outs] == [32, 16, 8, 4]
    side = json.loads(art.sidecar.read_text())
    assert [s["channels"] for s in side["stages"]] == want and side["output"]["names"] == ["C2", "C3", "C4", "C5"]


def test_mobilenet_v2_stage_maps_are_strides_4_to_32_and_width_sliced():
    from us3l.core.slicing import slice_to_width
    from us3l.exporters.outputs import StageOutputs, stage_taps

    net = get_model("us_mobilenet_v2", input_size=64).eval()
    assert [(n, s) for n, _, s in stage_taps(net)] == [("C2", 4), ("C3", 8), ("C4", 16), ("C5", 32)]
    x = torch.randn(2, 3, 64, 64)
    static = slice_to_width(net, 0.35)
    with torch.no_grad(), use_width(net, 0.35):
        ref = StageOutputs(net)(x)
    got = StageOutputs(static)(x)
    assert [o.shape[2] for o in got] == [16, 8, 4, 2]
    assert [o.shape[1] for o in got] == [channel_config(net, 0.35)[f"features.{i}.body.{k}"]
                                         for i, k in ((3, 6), (6, 6), (13, 6), (17, 6))]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ref, got))


def test_pack_is_smaller_and_exports_byte_identical_onnx(task, logits_export, tmp_path):
    from safetensors.numpy import load_file

    root, out = task
    res = pack(out.checkpoint, tmp_path / "model")
    assert {f.name for f in (tmp_path / "model").iterdir()} == {"model.safetensors", "config.json", "README.md",
                                                                  "accuracy.json"}
    full = export(tmp_path / "model", "0.25,1.0", out=tmp_path / "onnx", outputs="logits")  # the same ladder
    assert full.for_width(0.25).path.read_bytes() == logits_export.for_width(0.25).path.read_bytes()
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["label_names"] == [str(i) for i in range(10)] and config["us3l"]["head"]["kind"] == "per-width"
    assert config["us3l"]["head"]["widths"] == ["0.25", "1.0"]
    assert config["us3l"]["bn_bank_widths"] == ["0.25", "1.0"] and config["pretrained_cfg"]["mean"]
    tensors = load_file(str(tmp_path / "model" / "model.safetensors"))  # the safetensors library reads it
    assert {"heads.0.25.weight", "heads.1.0.weight"} <= set(tensors)
    assert not any(k.startswith(("training", "optimizer", "ema")) for k in tensors)
    # an SSL checkpoint with optimizer and EMA state: the directory keeps only what using it needs
    ssl = pack(root / "ssl" / "checkpoint.pt", tmp_path / "ssl_model")
    print(f"\nssl checkpoint {ssl.source_bytes} B -> model directory {ssl.size_bytes} B; "
          f"task checkpoint {res.source_bytes} B -> {res.size_bytes} B")
    assert ssl.size_bytes < ssl.source_bytes and res.size_bytes < res.source_bytes
    back = load_checkpoint(tmp_path / "ssl_model")
    orig = load_checkpoint(root / "ssl" / "checkpoint.pt")
    assert back.training is None and back.content_hash == orig.content_hash
    assert all(torch.equal(back.model[k], v) for k, v in orig.model.items())
    # the weights are sealed: a flipped byte anywhere in the file (backbone, BN bank, header) is refused
    weights_file = tmp_path / "ssl_model" / "model.safetensors"
    pristine, rng = weights_file.read_bytes(), np.random.default_rng(13)
    for offset in [0, len(pristine) - 1, *rng.integers(0, len(pristine), 8).tolist()]:
        raw = bytearray(pristine)
        raw[offset] ^= 0x01
        weights_file.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match="differs from the weights packed in this directory"):
            load_checkpoint(tmp_path / "ssl_model")
