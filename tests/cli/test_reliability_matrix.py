"""Issue 15: bad input and environment faults, one case per class and per command.

Every case runs the real CLI in-process (typer's CliRunner) in a fresh working folder and checks:
the exit code; a message about the intended problem (so a usage error on a mistyped flag cannot
pass for it); no traceback; no file added, removed or changed (hidden temp files and staging
folders included, unless the case is about repairing them); and no code run from a file (a
canary that a code-carrying pickle would create never appears).

Classes (the issue's numbering): 1 environment faults, 2 numeric options, 4 leftovers and repair,
5 integrity, 6 misleading messages, 7 device-profile trust, 8 overwriting a run, 9 records that
disagree with what happened. Class 3 (bad images) belongs to the streaming image pipeline
(issue 11); class 10 (SIGTERM) and the kill -9 / concurrency / full-disk faults need a
subprocess and live in tests/cli/test_fault_injection.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from us3l.cli.main import app
from us3l.core.files import host_tag

TINY = dict(image_size=8, batch_size=16, proj_hidden_dim=32, proj_out_dim=16, pred_hidden_dim=32,
            max_steps_per_epoch=1, log_interval=1, collapse_batch=32, tensorboard=False, epochs=1)
DEAD_PID = 99999999  # above any pid_max: no process has it


class _Evil:
    """Pickles to a call of ``os.mkdir(canary)``: loading it would run code."""

    def __init__(self, canary: Path) -> None:
        self.canary = str(canary)

    def __reduce__(self):
        return (os.mkdir, (self.canary,))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    """A tiny trained run (checkpoint with training state, metrics), an evil pickle, a flipped copy."""
    from us3l.trainer.config import TrainConfig
    from us3l.trainer.loop import run_training

    d = tmp_path_factory.mktemp("reliability")
    run = d / "run"
    run_training(TrainConfig(out_dir=str(run), **TINY))
    canary = d / "CODE-RAN"
    evil = d / "evil.pt"
    torch.save({"magic": "us3l-deploy-checkpoint", "format_version": 2, "x": _Evil(canary)}, evil)
    data = bytearray((run / "checkpoint.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped = d / "flipped.pt"
    flipped.write_bytes(bytes(data))
    from us3l.exporters import ExportConfig, run_export

    onnx = run_export(ExportConfig(checkpoint=str(run / "checkpoint.pt"), widths="0.5", out_dir=str(d / "onnx"),
                                   threads=1)).artifacts[0].path
    return {"run": run, "ckpt": run / "checkpoint.pt", "evil": evil, "canary": canary, "flipped": flipped, "onnx": onnx}


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every file and folder under ``root`` (hidden ones too) with size and modification time."""
    out = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if rel[0] in (".home", ".cache") and (len(rel) == 1 or rel[1] == "Microsoft"):
            continue  # onnxruntime's own telemetry folder under the fake HOME / XDG cache (first session per process)
        st = p.lstat()
        out[str(p.relative_to(root))] = None if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return out


def _devices(cwd: Path, body: str, name: str = "d.toml") -> None:
    (cwd / name).write_text(body)


def _accuracy_bad(cwd: Path) -> None:
    (cwd / "BAD.json").write_text(json.dumps({"results": [{"width": 0.5, "knn": "high"}]}))


def _afile(cwd: Path) -> None:
    (cwd / "afile").write_text("not a folder\n")


def _folder_with_a_corrupt_image(cwd: Path) -> None:
    """An image folder whose train split holds one file that is not an image (class 3)."""
    from PIL import Image

    for split, names in (("train", ("0", "1")), ("val", ("0", "1"))):
        for k, cls in enumerate(("a", "b")):
            (cwd / "imgs" / split / cls).mkdir(parents=True)
            for name in names:
                Image.new("RGB", (12, 9), (40 * k, 90, 200)).save(cwd / "imgs" / split / cls / f"{name}.png")
    (cwd / "imgs" / "train" / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)


def _a_png(cwd: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (10, 20, 30)).save(cwd / "x.png")


def _existing_run(cwd: Path, base: dict[str, Path]) -> None:
    shutil.copytree(base["run"], cwd / "run")


# issue 25: files that are not what they are given as
def _text(cwd: Path, name: str = "notes.pt") -> None:
    (cwd / name).write_text("hello, this is a text file\n")


def _random(cwd: Path, name: str = "noise.pt") -> None:
    (cwd / name).write_bytes(bytes((37 * i + 11) % 256 for i in range(300)))  # starts with 0b 30 55 ...


def _run_with_text_checkpoint(cwd: Path) -> None:
    (cwd / "run").mkdir()
    _text(cwd / "run", "checkpoint.pt")


def _cut_classifier(cwd: Path, base: dict[str, Path]) -> None:
    """A classifier artifact cut short (a broken download) whose sidecar is intact: predict must name the file."""
    data = base["onnx"].read_bytes()
    (cwd / "cut.onnx").write_bytes(data[: len(data) // 3])
    side = json.loads(base["onnx"].with_suffix(".json").read_text())
    side.update(artifact="cut.onnx", output={"kind": "logits"}, classes=[str(i) for i in range(10)],
                preprocess={"resize": 8, "mean": [0.5] * 3, "std": [0.5] * 3})
    (cwd / "cut.json").write_text(json.dumps(side))
    _a_png(cwd)


def _cut_features(cwd: Path, base: dict[str, Path]) -> None:
    """An exported feature artifact cut short, its sidecar copied beside it."""
    data = base["onnx"].read_bytes()
    (cwd / "cut.onnx").write_bytes(data[: len(data) // 2])
    side = json.loads(base["onnx"].with_suffix(".json").read_text())
    side["artifact"] = "cut.onnx"
    (cwd / "cut.json").write_text(json.dumps(side))


def _reference_with_text_epoch(cwd: Path) -> None:
    torch.save({"epoch": "ten", "arch": "us_cifar_resnet18",
                "state_dict": {"module.encoder_q.conv1.weight": torch.zeros(4, 3, 3, 3)}}, cwd / "ref.pth.tar")


def _config(cwd: Path, body: str) -> None:
    (cwd / "c.toml").write_text(body)


# (id, class, argv with {ckpt}/{evil}/{flipped} placeholders, setup(cwd), exit code, message regex)
CASES: list[tuple[str, int, list[str], Callable[[Path], None] | None, int, str]] = [
    # 1: environment faults
    ("train-out-under-file", 1, ["train", "--out", "afile/run", "--epochs", "1"], _afile, 2,
     r"cannot write to --out afile/run: afile is a file"),
    ("import-out-under-file", 1, ["import", "{ckpt}", "--out", "afile/r.pt"], _afile, 2,
     r"--out folder afile is a file; valid: a folder"),
    ("export-out-under-file", 1, ["export", "--arch", "us_resnet_mini", "--out", "afile/x"], _afile, 2,
     r"cannot write to afile/x: afile is not a writable directory"),
    ("bench-out-under-file", 1, ["bench", "--arch", "us_resnet_mini", "--out", "afile/b", "--widths", "0.5"], _afile, 2,
     r"cannot write to --out afile/b: afile is a file"),
    ("eval-cuda-without-cuda", 1, ["eval", "{ckpt}", "--device", "cuda"], None, 2,
     r"--device cuda: CUDA is not available on this machine"),
    # 2: numeric options
    ("train-batch-0", 2, ["train", "--batch-size", "0", "--out", "r"], None, 2, r"batch_size must be >= 1, got 0"),
    ("train-lr-nan", 2, ["train", "--lr", "nan", "--out", "r"], None, 2, r"lr must be > 0, got nan"),
    ("eval-knn-k-0", 2, ["eval", "{ckpt}", "--knn-k", "0"], None, 2, r"--knn-k 0 is invalid; valid: an integer >= 1"),
    ("eval-batch-negative", 2, ["eval", "{ckpt}", "--batch-size", "-4"], None, 2, r"--batch-size -4 is invalid"),
    ("eval-image-size-0", 2, ["eval", "{ckpt}", "--image-size", "0"], None, 2, r"--image-size 0 is invalid"),
    ("export-image-size-0", 2, ["export", "{ckpt}", "--image-size", "0", "--out", "x"], None, 2,
     r"--image-size 0 is invalid; valid: an integer >= 4"),
    ("export-atol-nan", 2, ["export", "{ckpt}", "--atol", "nan", "--out", "x"], None, 2, r"atol nan is invalid"),
    ("widths-image-size-0", 2, ["widths", "--arch", "us_resnet_mini", "--image-size", "0"], None, 2,
     r"--image-size 0 is invalid"),
    ("widths-tiny-step", 2, ["widths", "--widths", "0.25:1.0:0.000001"], None, 2,
     r"names 7.5e\+05 widths; valid: at most 1001"),
    ("bench-duration-nan", 2, ["bench", "--arch", "us_resnet_mini", "--duration", "nan"], None, 2,
     r"--duration nan is invalid; valid: a finite number > 0"),
    ("bench-budget-nan", 2, ["bench", "--arch", "us_resnet_mini", "--budget-ms", "nan"], None, 2,
     r"--budget-ms nan is invalid"),
    ("bench-budget-inf", 2, ["bench", "--arch", "us_resnet_mini", "--budget-ms", "inf"], None, 2,
     r"--budget-ms inf is invalid"),
    ("bench-batch-0", 2, ["bench", "--arch", "us_resnet_mini", "--batch", "0"], None, 2, r"--batch '0' is invalid"),
    ("import-width-nan", 2, ["import", "{ckpt}", "--out", "r.pt", "--calibrated-width", "nan"], None, 2,
     r"width nan is outside the model's range|not finite"),
    # 5: integrity (a byte flipped in the middle of the file)
    ("eval-flipped", 5, ["eval", "{flipped}"], None, 2, r"is corrupt"),
    ("export-flipped", 5, ["export", "{flipped}", "--out", "x"], None, 2, r"is corrupt"),
    ("widths-flipped", 5, ["widths", "{flipped}"], None, 2, r"is corrupt"),
    ("bench-flipped", 5, ["bench", "{flipped}", "--widths", "0.5"], None, 2, r"is corrupt"),
    # 6: messages that mislead
    ("widths-unknown-arch", 6, ["widths", "--arch", "nope"], None, 2, r"unknown architecture 'nope'; valid: us_"),
    ("export-unknown-arch", 6, ["export", "nope", "--out", "x"], None, 2, r"unknown architecture 'nope'"),
    ("eval-code-pickle", 6, ["eval", "{evil}"], None, 2, r"would execute code when loaded.*refused, nothing from it was run"),
    ("import-code-pickle", 6, ["import", "{evil}", "--out", "r.pt"], None, 2, r"would execute code when loaded"),
    ("bench-bad-accuracy", 6, ["bench", "{ckpt}", "--accuracy", "BAD.json", "--widths", "0.5"], _accuracy_bad, 2,
     r"accuracy file BAD.json: row 0 has knn 'high'"),
    # 7: device-profile trust
    ("bench-cwd-profile-not-read", 7, ["bench", "--arch", "us_resnet_mini", "--device", "pi"],
     lambda c: _devices(c, '[devices.pi]\nhost = "pi"\n', "us3l-devices.toml"), 2,
     r"unknown device 'pi'.*read only when named: pass --devices-file us3l-devices.toml"),
    ("bench-proxycommand", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nhost = "e"\nssh_options = ["ProxyCommand=mkdir CODE-RAN"]\n'), 2,
     r"d.toml:3: ssh option 'ProxyCommand' of device 'e' is not allowed"),
    ("bench-localcommand", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nhost = "e"\nssh_options = ["PermitLocalCommand yes", "LocalCommand=id"]\n'), 2,
     r"ssh option 'PermitLocalCommand' of device 'e' is not allowed"),
    ("bench-devnull-known-hosts", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nhost = "e"\nknown_hosts = "/dev/null"\naccept_new_host_key = true\n'), 2,
     r"accepts any key on every connection \(host checking off\)"),
    ("bench-strict-no", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nhost = "e"\nssh_options = ["StrictHostKeyChecking=no"]\n'), 2,
     r"turns host-key checking off"),
    ("bench-user-without-host", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nuser = "me"\nport = 2222\n'), 2,
     r"sets user, port but no host, so it would silently run on this machine"),
    ("bench-builtin-clash", 7, ["bench", "--arch", "us_resnet_mini", "--device", "cpu", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.cpu]\nrunner = "torch"\n'), 2, r"profile name 'cpu' is a built-in device"),
    ("bench-port-range", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nhost = "e"\nport = 70000\n'), 2, r"d.toml:3: port 70000 .* valid: 1..65535"),
    ("bench-unknown-runner", 7, ["bench", "--arch", "us_resnet_mini", "--device", "e", "--devices-file", "d.toml"],
     lambda c: _devices(c, '[devices.e]\nrunner = "nope"\n'), 2, r"runner 'nope' in \[devices.e\] is unknown; valid: "),
    ("pack-out-under-file", 1, ["pack", "{ckpt}", "--out", "afile/m"], _afile, 2, r"afile"),
    ("finetune-lr-nan", 2, ["finetune", "{ckpt}", "--lr", "nan", "--out", "f"], None, 2, r"lr nan is invalid"),
    ("finetune-epochs-0", 2, ["finetune", "{ckpt}", "--epochs", "0", "--out", "f"], None, 2, r"epochs 0 is invalid"),
    # 3: images (the policy is --on-bad-image skip|fail; skip is tested in tests/trainer/test_streaming.py)
    ("train-corrupt-image-fail", 3, ["train", "--data", "imagefolder", "--data-root", "imgs", "--image-size", "8",
                                     "--batch-size", "2", "--workers", "0", "--on-bad-image", "fail", "--epochs", "1",
                                     "--out", "r"], _folder_with_a_corrupt_image, 2,
     r"bad image .*corrupt.png.*rerun with --on-bad-image skip"),
    ("pack-flipped", 5, ["pack", "{flipped}", "--out", "m"], None, 2, r"is corrupt"),
    ("finetune-flipped", 5, ["finetune", "{flipped}", "--out", "f"], None, 2, r"is corrupt"),
    ("predict-missing-artifact", 6, ["predict", "nope.onnx", "x.png"], _a_png, 2, r"artifact nope.onnx does not exist"),
    # 8: overwriting a run
    ("train-existing-run", 8, ["train", "--out", "run", "--epochs", "1"], "existing-run", 2,
     r"run already holds a training run \(checkpoint.pt, metrics.jsonl\); pass --resume to continue it, "
     r"--overwrite to replace it"),
    ("train-resume-and-overwrite", 8, ["train", "--out", "run", "--resume", "--overwrite"], "existing-run", 2,
     r"resume and overwrite exclude each other"),
    # issue 25: a file that is no PyTorch checkpoint is said to be that (not "would execute code")
    ("eval-text-checkpoint", 6, ["eval", "notes.pt"], _text, 2,
     r"checkpoint notes.pt is not a PyTorch checkpoint \(27 bytes, starts with 'hello, this is a'\)"),
    ("widths-random-checkpoint", 6, ["widths", "noise.pt"], _random, 2,
     r"checkpoint noise.pt is not a PyTorch checkpoint \(300 bytes, starts with 0b 30 55 7a 9f c4 e9 0e\)"),
    ("bench-text-checkpoint", 6, ["bench", "notes.pt", "--widths", "0.5"], _text, 2, r"notes.pt is not a PyTorch checkpoint"),
    ("finetune-text-checkpoint", 6, ["finetune", "notes.pt", "--out", "f"], _text, 2,
     r"notes.pt is not a PyTorch checkpoint \(27 bytes"),
    ("pack-random-checkpoint", 6, ["pack", "noise.pt", "--out", "m"], _random, 2, r"noise.pt is not a PyTorch checkpoint"),
    ("import-text-checkpoint", 6, ["import", "notes.pt", "--out", "r.pt"], _text, 2,
     r"reference checkpoint notes.pt is not a PyTorch checkpoint \(27 bytes"),
    ("train-resume-text-checkpoint", 6, ["train", "--out", "run", "--resume"], _run_with_text_checkpoint, 2,
     r"run/checkpoint.pt is not a PyTorch checkpoint"),
    ("finetune-code-pickle", 6, ["finetune", "{evil}", "--out", "f"], None, 2, r"would execute code when loaded"),
    ("pack-code-pickle", 6, ["pack", "{evil}", "--out", "m"], None, 2, r"would execute code when loaded"),
    # a truncated or foreign artifact names the file
    ("predict-truncated-onnx", 6, ["predict", "cut.onnx", "x.png"], "cut-classifier", 2,
     r"cut.onnx cannot be read as ONNX \(\d+ bytes, .*\); valid: an .onnx file written by 'us3l export'"),
    ("predict-text-as-onnx", 6, ["predict", "notes.onnx", "x.png"], lambda c: (_text(c, "notes.onnx"), _a_png(c)), 2,
     r"artifact notes.onnx cannot be read as ONNX \(27 bytes"),
    ("eval-artifact-text", 6, ["eval", "{ckpt}", "--artifact", "notes.onnx"], lambda c: _text(c, "notes.onnx"), 2,
     r"artifact notes.onnx cannot be read as ONNX \(27 bytes"),
    ("eval-artifact-truncated", 6, ["eval", "{ckpt}", "--artifact", "cut.onnx"], "cut-features", 2,
     r"artifact cut.onnx cannot be read as ONNX \(\d+ bytes"),
    ("predict-features-artifact", 6, ["predict", "{onnx}", "x.png"], _a_png, 2,
     r"outputs features, not class scores; export a classifier"),
    ("predict-top-k-0", 2, ["predict", "{onnx}", "x.png", "--top-k", "0"], _a_png, 2, r"--top-k 0 is invalid"),
    ("predict-threads-negative", 2, ["predict", "{onnx}", "x.png", "--threads", "-1"], _a_png, 2,
     r"--threads -1 is invalid; valid: 0 \(auto\)"),
    # resume: nothing to resume is said, with the folder
    ("train-resume-empty-folder", 8, ["train", "--out", "empty", "--resume"], lambda c: (c / "empty").mkdir(), 2,
     r"--resume: empty holds no checkpoint.pt, so there is nothing to resume; drop --resume to start a new run"),
    ("train-resume-missing-folder", 8, ["train", "--out", "nope", "--resume"], None, 2,
     r"--resume: nope does not exist, so there is nothing to resume; drop --resume"),
    # a non-numeric field of an imported checkpoint names the field
    ("import-text-epoch", 6, ["import", "ref.pth.tar", "--out", "r.pt"], _reference_with_text_epoch, 2,
     r"ref.pth.tar: field 'epoch' is 'ten'; valid: a whole number >= 0"),
    # config files
    ("train-config-missing", 1, ["train", "--config", "none.toml", "--out", "r"], None, 2,
     r"cannot read config file none.toml: No such file"),
    ("train-config-not-toml", 6, ["train", "--config", "c.toml", "--out", "r"], lambda c: _config(c, "epochs = [\n"), 2,
     r"config file c.toml is not valid TOML"),
    ("train-config-unknown-key", 6, ["train", "--config", "c.toml", "--out", "r"], lambda c: _config(c, "epoch = 3\n"), 2,
     r"c.toml: unknown (setting|key) 'epoch'"),
    ("train-config-wrong-type", 6, ["train", "--config", "c.toml", "--out", "r"], lambda c: _config(c, 'epochs = "ten"\n'),
     2, r"c.toml: .*epochs.*(integer|int)"),
    ("train-config-not-utf8", 6, ["train", "--config", "c.toml", "--out", "r"],
     lambda c: (c / "c.toml").write_bytes(b"\xff\xfe\x00e"), 2, r"config file c.toml is not UTF-8 text"),
    ("train-threads-negative", 2, ["train", "--threads", "-2", "--out", "r"], None, 2, r"threads"),
    ("eval-threads-negative", 2, ["eval", "{ckpt}", "--threads", "-2"], None, 2,
     r"--threads -2 is invalid; valid: 0 \(auto\) or a positive number of threads"),
    ("finetune-threads-negative", 2, ["finetune", "{ckpt}", "--threads", "-2", "--out", "f"], None, 2,
     r"--threads -2 is invalid"),
    ("export-threads-negative", 2, ["export", "{ckpt}", "--threads", "-2", "--out", "x"], None, 2, r"--threads -2 is invalid"),
    ("bench-threads-negative", 2, ["bench", "--arch", "us_resnet_mini", "--threads", "-2"], None, 2,
     r"--threads -2 is invalid"),
    ("bench-max-tail-1", 2, ["bench", "--arch", "us_resnet_mini", "--max-tail", "1"], None, 2, r"--max-tail 1 is invalid"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_line_and_leaves_nothing(case, base, tmp_path, monkeypatch):
    name, klass, argv, setup, code, pattern = case
    if name == "eval-cuda-without-cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.chdir(tmp_path)
    for var in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(tmp_path / ".home"))
    if setup == "existing-run":
        _existing_run(tmp_path, base)
    elif setup == "cut-classifier":
        _cut_classifier(tmp_path, base)
    elif setup == "cut-features":
        _cut_features(tmp_path, base)
    elif setup is not None:
        setup(tmp_path)
    argv = [a.format(ckpt=base["ckpt"], evil=base["evil"], flipped=base["flipped"], onnx=base["onnx"]) for a in argv]
    before, inputs = _snapshot(tmp_path), _snapshot(base["run"])
    result = CliRunner().invoke(app, argv)
    text = " ".join(result.output.split())
    assert result.exit_code == code, f"class {klass}: {text}"
    assert re.search(pattern, text), f"class {klass}: expected /{pattern}/ in: {text}"
    assert "No such option" not in text and "Usage:" not in text, text
    assert "Traceback" not in text and (result.exception is None or isinstance(result.exception, SystemExit)), text
    assert text.count("error:") == 1, text
    assert _snapshot(tmp_path) == before, "files were left behind or changed"
    assert _snapshot(base["run"]) == inputs
    assert not base["canary"].exists(), "code from a file was run"


def test_matrix_covers_every_class_and_command():
    classes = {c[1] for c in CASES} | {4, 9}  # 4 and 9: the repair and record tests below
    commands = {c[2][0] for c in CASES}
    assert classes >= {1, 2, 3, 4, 5, 6, 7, 8, 9}  # 10 (SIGTERM) is in test_fault_injection.py
    assert commands == {"train", "eval", "export", "import", "widths", "bench", "finetune", "predict", "pack"}


def test_full_disk_is_one_line_and_writes_nothing(base, tmp_path, monkeypatch):
    """Class 1, simulated ENOSPC (the real tmpfs variant is in test_fault_injection.py): every file
    the commands write goes through the atomic writer, whose writes now fail as on a full disk."""
    import errno

    import us3l.core.files as files

    real_fdopen = files.os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.fh.__exit__(*exc)

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode="r", *a, **k: Full(real_fdopen(fd, mode, *a, **k)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    shutil.copy(base["ckpt"], tmp_path / "ckpt.pt")
    runs = {
        "train": ["train", "--out", "run", "--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "16",
                  "--image-size", "8"],
        "export": ["export", "--arch", "us_resnet_mini", "--widths", "0.5", "--out", "x"],
        "import": ["import", "ckpt.pt", "--out", "r.pt"],  # fails on reading (not a reference file) first
        "eval": ["eval", "ckpt.pt", "--widths", "1.0", "--calib-batches", "1"],
    }
    before = _snapshot(tmp_path)
    for command in ("train", "export", "eval"):
        result = CliRunner().invoke(app, runs[command])
        text = " ".join(result.output.split())
        assert result.exit_code == 2, (command, text)
        assert "No space left on device" in text and "Traceback" not in text, (command, text)
        left = {k for k in set(_snapshot(tmp_path)) - set(before)}
        # nothing at all: train removes the run folder it created when no checkpoint was written
        assert left == set(), (command, left)
    assert _snapshot(tmp_path) == before


def test_export_repairs_an_interrupted_commit_and_removes_stale_staging(base, tmp_path):
    """Class 4: an artifact without its sidecar (a commit killed between the two), listed in the
    commit journal, is rebuilt without --force; a killed run's staging folder is removed."""
    from us3l.exporters.artifacts import JOURNAL_NAME, STAGING_PREFIX

    out = tmp_path / "x"
    out.mkdir()
    (out / "us_resnet_mini_w0.5.onnx").write_bytes(b"half")  # the artifact landed, its sidecar did not
    (out / JOURNAL_NAME).write_text(json.dumps({"files": ["us_resnet_mini_w0.5.onnx", "us_resnet_mini_w0.5.json"]}))
    (out / f"{STAGING_PREFIX}killed").mkdir()
    (out / f"{STAGING_PREFIX}killed" / "part.onnx").write_bytes(b"partial")
    result = CliRunner().invoke(app, ["export", "--arch", "us_resnet_mini", "--widths", "0.5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["us_resnet_mini_w0.5.json", "us_resnet_mini_w0.5.onnx"]
    side = json.loads((out / "us_resnet_mini_w0.5.json").read_text())
    from us3l.core.files import sha256_file

    assert side["sha256"] == sha256_file(out / "us_resnet_mini_w0.5.onnx")
    # without the journal, a foreign file at the artifact's name is still protected
    (out / "us_resnet_mini_w0.25.onnx").write_bytes(b"someone else's")
    result = CliRunner().invoke(app, ["export", "--arch", "us_resnet_mini", "--widths", "0.25", "--out", str(out)])
    assert result.exit_code == 2 and "pass --force" in result.output
    assert (out / "us_resnet_mini_w0.25.onnx").read_bytes() == b"someone else's"


def test_stale_temp_files_of_dead_writers_are_removed(base, tmp_path):
    """Class 4: the next atomic write of a file removes the temp files a killed writer left."""
    ckpt = tmp_path / "ckpt.pt"
    shutil.copy(base["ckpt"], ckpt)
    stale = tmp_path / f".ckpt.pt.{DEAD_PID}@{host_tag()}.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".ckpt.pt.{os.getppid()}@{host_tag()}.abcd1234.tmp"  # a running writer's: kept
    alive.write_bytes(b"in progress")
    result = CliRunner().invoke(app, ["eval", str(ckpt), "--widths", "1.0", "--calib-batches", "1", "--store-bn"])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and alive.exists()


def test_records_name_what_was_used(base, tmp_path):
    """Class 9: 180 calibration images exist, 512 are asked for: the sidecar says 180; eval rows
    record the calibration images and k actually used."""
    x = np.random.default_rng(0).standard_normal((180, 3, 8, 8)).astype("float32")
    np.save(tmp_path / "calib.npy", x)
    result = CliRunner().invoke(app, ["export", str(base["ckpt"]), "--widths", "0.5", "--calib-data",
                                      str(tmp_path / "calib.npy"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 0, result.output
    side = json.loads(next((tmp_path / "x").glob("*.json")).read_text())
    assert side["bn"] == {"source": "recalibrated", "data": side["bn"]["data"], "images": 180}
    ckpt = tmp_path / "ckpt.pt"
    shutil.copy(base["ckpt"], ckpt)
    result = CliRunner().invoke(app, ["eval", str(ckpt), "--widths", "1.0", "--calib-batches", "2",
                                      "--batch-size", "1000", "--knn-k", "5000", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)[0]
    assert row["calib_images"] == 1437 and row["knn_k"] == 1437  # the digits training split


def test_train_overwrite_replaces_the_run(base, tmp_path, monkeypatch):
    """Class 8: --overwrite replaces checkpoint, metrics and TensorBoard logs."""
    monkeypatch.chdir(tmp_path)
    _existing_run(tmp_path, base)
    (tmp_path / "run" / "tb").mkdir()
    (tmp_path / "run" / "tb" / "events.old").write_text("old")
    (tmp_path / "run" / "metrics.jsonl").write_text("\n".join(json.dumps({"epoch": e}) for e in (1, 2, 3)) + "\n")
    result = CliRunner().invoke(app, ["train", "--out", "run", "--overwrite", "--epochs", "1", "--max-steps-per-epoch",
                                      "1", "--batch-size", "16", "--image-size", "8"])
    assert result.exit_code == 0, result.output
    assert [json.loads(x)["epoch"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    assert not (tmp_path / "run" / "tb" / "events.old").exists()
