"""CLI conventions across commands: --widths (alias --width), --json on every command that produces
results, and tables that stay readable in 80 columns (values never cut to ``0.91…``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

US3L = [sys.executable, "-m", "us3l.cli.main"]


def _run(args: list[str], cwd: Path, columns: int = 80) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run([*US3L, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


TRAIN_TABLE: dict[str, str] = {}  # the fixture's own train output at 80 columns (one training run for the module)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("conventions")
    TRAIN_TABLE["stdout"] = _run(["train", "--epochs", "1", "--max-steps-per-epoch", "2", "--out", "run"], d).stdout
    _run(["eval", "run/checkpoint.pt", "--widths", "0.25,1.0", "--calib-batches", "2", "--store-bn"], d)
    return d


def _no_cut_values(text: str) -> None:
    lines = text.splitlines()
    assert not [ln for ln in lines if "…" in ln], text
    assert max(len(ln) for ln in lines) <= 80, text


@pytest.mark.slow
def test_tables_fit_80_columns_without_cutting_values(run_dir):
    outs = {
        "train": TRAIN_TABLE["stdout"],
        "eval": _run(["eval", "run/checkpoint.pt", "--width", "0.25,1.0", "--calib-batches", "2"], run_dir).stdout,
        "widths": _run(["widths", "run/checkpoint.pt", "--width", "0.25:1.0:0.05"], run_dir).stdout,
        "export": _run(["export", "run/checkpoint.pt", "--widths", "0.25,1.0", "--out", "onnx"], run_dir).stdout,
        "bench": _run(["bench", "run/checkpoint.pt", "--width", "0.25,1.0", "--iterations", "3", "--rounds", "1",
                       "--warmup-ms", "1", "--budget-ms", "50", "--out", "b", "--no-plot"], run_dir).stdout,
    }
    for name, text in outs.items():
        assert text.strip(), name
        _no_cut_values(text)
    assert "0.25" in outs["export"] and "0.25" in outs["bench"]


@pytest.mark.slow
def test_every_result_command_speaks_json(run_dir):
    train = json.loads(_run(["train", "--epochs", "1", "--max-steps-per-epoch", "2", "--out", "run3", "--json"],
                            run_dir).stdout)
    assert train["checkpoint"].endswith("run3/checkpoint.pt") and train["epochs"] == 1
    rows = json.loads(_run(["eval", "run/checkpoint.pt", "--widths", "0.25", "--calib-batches", "2", "--json"],
                           run_dir).stdout)
    assert rows[0]["width"] == 0.25
    widths = json.loads(_run(["widths", "run/checkpoint.pt", "--widths", "0.5", "--json"], run_dir).stdout)
    assert widths[0]["width"] == 0.5
    exported = json.loads(_run(["export", "run/checkpoint.pt", "--width", "0.5", "--out", "onnx", "--json"],
                               run_dir).stdout)
    assert Path(run_dir / exported["artifacts"][0]["path"]).is_file() and exported["artifacts"][0]["width"] == 0.5
    report = json.loads(_run(["bench", "run/checkpoint.pt", "--widths", "0.5", "--iterations", "3", "--rounds", "1",
                              "--warmup-ms", "1", "--out", "b", "--no-plot", "--json"], run_dir).stdout)
    assert [r["width"] for r in report["results"]] == [0.5]


def test_export_batch_takes_one_value_in_bench_syntax(tmp_path):
    proc = subprocess.run([*US3L, "export", "--arch", "us_resnet_mini", "--batch", "1,8", "--out", "x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "one fixed batch size" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_files_written_by_export_honour_the_umask(tmp_path):
    """Under umask 022 every file ``us3l export`` writes is 0644 (the atomic writer's temp files are
    0600 until they take the umask's mode)."""
    import stat

    proc = subprocess.run([*US3L, "export", "--arch", "us_resnet_mini", "--widths", "0.5", "--out", "x"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr
    files = [p for p in (tmp_path / "x").rglob("*") if p.is_file()]
    assert files and {oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {"0o644"}, files


# ------------------------------------------------------------------ one convention per option

def _commands() -> dict:
    from cli_commands import all_commands

    return all_commands()


def _options(cmd) -> dict[str, object]:
    return {opt: p for p in cmd.params if p.param_type_name == "option" for opt in p.opts}


def _enum_of(param) -> type | None:
    """The Enum an option is typed with (``X | None`` unwrapped), else None."""
    import enum
    import typing

    annotation = param.type_descriptor.annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return candidate
    return None


#: Commands that write files: each takes -o/--out.
WRITERS = ("train", "eval", "export", "import", "bench", "finetune", "pack", "fleet plan")
#: Options whose values come from a fixed vocabulary: each is a choice listed in --help.
CHOICE_OPTIONS = ("--format", "--precision", "--calibration", "--outputs", "--method", "--ssl", "--data",
                  "--on-bad-image", "--linear-preset", "--onnx-exporter", "--snap", "--metric", "--runner", "--augment",
                  "--augmentation", "--head", "--int8-recipe")


def test_every_writer_takes_o_out_and_image_size_is_one_name():
    commands = _commands()
    for name in WRITERS:
        opts = _options(commands[name])
        assert "-o" in opts and "--out" in opts and opts["-o"] is opts["--out"], name
    for name, cmd in commands.items():
        opts = _options(cmd)
        assert "--input-size" not in opts, name
    assert "--single-width" in _options(commands["train"]) and "--width" not in _options(commands["train"])
    assert "--image-size" in _options(commands["export"]) and "--image-size" in _options(commands["widths"])


def test_every_choice_option_lists_its_choices():
    from typer.testing import CliRunner

    from us3l.cli.main import app

    seen = set()
    for name, cmd in _commands().items():
        help_text = " ".join(CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"}).output.split())
        for opt, param in _options(cmd).items():
            if opt not in CHOICE_OPTIONS:
                continue
            seen.add(opt)
            if name == "bench" and opt == "--precision":  # a comma list: its metavar names the choices
                assert param.metavar == "[fp32|fp16|int8][,...]"
                continue
            choice = _enum_of(param)
            assert choice is not None, (name, opt)
            assert param.type_descriptor.is_choice and f"<{'|'.join(e.value for e in choice)}>" in help_text, (name, opt)
    assert seen == set(CHOICE_OPTIONS)


def test_choice_enums_match_the_rooms_vocabularies():
    """The CLI writes the choices out (so --help needs no torch); they must not drift from their source."""
    from us3l.benchmarks import list_runners
    from us3l.benchmarks.stats import METRICS
    from us3l.cli import choices
    from us3l.core.data import DATASETS
    from us3l.core.images import BAD_IMAGE_POLICIES
    from us3l.core.precision import PRECISIONS
    from us3l.exporters import list_exporters
    from us3l.exporters.onnx_exporter import ONNX_EXPORTERS
    from us3l.exporters.onnx_quant import CALIBRATION_METHODS
    from us3l.exporters.outputs import OUTPUTS
    from us3l.exporters.pipeline import FORMAT_ALIASES, SNAP_DIVISORS
    from us3l.trainer import evaluate
    from us3l.trainer.config import AUGMENTATIONS, METHODS, SSL_TYPES
    from us3l.trainer.probes import LINEAR_PRESETS

    def values(enum) -> list[str]:
        return [e.value for e in enum]

    assert values(choices.Dataset) == list(DATASETS)
    assert values(choices.TrainMethod) == list(METHODS) and values(choices.SSL) == list(SSL_TYPES)
    assert values(choices.BadImage) == list(BAD_IMAGE_POLICIES)
    assert values(choices.EvalMethod) == list(evaluate.METHODS) and values(choices.LinearPreset) == list(LINEAR_PRESETS)
    assert sorted(values(choices.Format)) == sorted([*list_exporters(), *FORMAT_ALIASES])
    assert values(choices.Calibration) == list(CALIBRATION_METHODS) and values(choices.Outputs) == list(OUTPUTS)
    assert values(choices.OnnxExporter) == list(ONNX_EXPORTERS)
    assert values(choices.Snap) == [str(d) for d in SNAP_DIVISORS] and values(choices.Metric) == list(METRICS)
    assert sorted(values(choices.Runner)) == sorted(r for r in list_runners() if r != "onnxruntime-agent")
    assert values(choices.Precision) == list(PRECISIONS)
    from us3l.benchmarks.artifacts import BENCH_OUTPUTS
    from us3l.exporters.int8_recipe import RECIPE_MODES
    from us3l.trainer.finetune import AUGMENTS, HEADS

    assert values(choices.Augment) == list(AUGMENTS) and values(choices.BenchOutputs) == list(BENCH_OUTPUTS)
    assert values(choices.Augmentation) == list(AUGMENTATIONS) and values(choices.Head) == list(HEADS)
    assert values(choices.Int8Recipe) == list(RECIPE_MODES)


def test_onnx_files_name_their_producer(tmp_path):
    import onnx

    import us3l
    from us3l.core.version import __version__

    result = us3l.export("us_resnet_mini", "0.25", out=tmp_path, onnx_exporter="torchscript", bn_images=8,
                         parity_images=2)
    model = onnx.load(str(result.artifacts[0].path))
    assert (model.producer_name, model.producer_version) == ("us3l-deploy", __version__)
