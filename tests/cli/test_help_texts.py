"""Help texts: every option and argument of every command has a one-line help, every command's
--help ends with one real example, and that example parses against the command itself. The CLI
is one code path with the Python API: each command calls its API function."""

from __future__ import annotations

import shlex

import pytest
import typer
from typer.testing import CliRunner

from us3l.cli.common import EXAMPLE_PREFIX
from us3l.cli.main import app

from cli_commands import flatten

ROOT = typer.main.get_command(app)
BY_NAME = flatten(ROOT)
COMMANDS = sorted(BY_NAME)
GROUPS = sorted(name for name, cmd in ROOT.commands.items() if hasattr(cmd, "commands"))


def test_all_commands_present():
    assert COMMANDS == ["bench", "eval", "export", "finetune", "fleet check", "fleet plan", "import", "pack", "predict",
                        "train", "widths"]
    assert GROUPS == ["fleet"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_parameter_has_one_line_help(name):
    cmd = BY_NAME[name]
    assert cmd.help and cmd.help.strip(), f"{name} has no description"
    for param in cmd.params:
        text = (getattr(param, "help", None) or "").strip()
        assert text, f"us3l {name}: {param.name} has no help"
        assert "\n" not in text and len(text) <= 200, f"us3l {name}: {param.name} help is not one line: {text!r}"
        is_option = getattr(param, "param_type_name", "") == "option"
        if is_option and param.default is None and not param.required and not getattr(param, "is_flag", False):
            # no value shown by click: the help must say what happens when it is omitted
            assert "[default:" in text, \
                f"us3l {name} --{param.name}: say the default in the help: {text!r}"


def _parse(line: str) -> None:
    """Parse one ``us3l ...`` command line against the real click command (nothing runs)."""
    args = shlex.split(line)
    assert args[0] == "us3l", line
    words = 2 if " ".join(args[1:3]) in BY_NAME else 1  # "fleet plan": a sub-app's command
    name = " ".join(args[1:1 + words])
    sub = BY_NAME[name]
    with sub.make_context(f"us3l {name}", args[1 + words:], resilient_parsing=False) as ctx:
        assert ctx.params is not None


@pytest.mark.parametrize("name", COMMANDS + GROUPS + ["<root>"])
def test_help_shows_an_example_that_parses(name, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for f in ("runs/us3l/checkpoint.pt", "checkpoint_0199.pth.tar", "docs/fleet.example.toml",
              "plan/manifest.json"):  # files the examples name (exists=True checks)
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"")
    epilog = (ROOT if name == "<root>" else BY_NAME.get(name) or ROOT.commands[name]).epilog or ""
    assert epilog.startswith(EXAMPLE_PREFIX), f"us3l {name} --help has no example"
    for part in epilog[len(EXAMPLE_PREFIX):].split("&&"):
        _parse(part.strip())
    args = ["--help"] if name == "<root>" else [*name.split(), "--help"]
    out = CliRunner().invoke(app, args, terminal_width=80).output
    assert "Example: us3l" in out and "[default:" in out or name in ("<root>", *GROUPS)


API_CALLS = {
    "train": ("train", ["train", "--epochs", "1"]),
    "eval": ("evaluate", ["eval", "CKPT"]),
    "widths": ("widths", ["widths", "--arch", "us_resnet_mini"]),
    "export": ("export", ["export", "--arch", "us_resnet_mini"]),
    "bench": ("bench", ["bench", "--arch", "us_resnet_mini"]),
    "import": ("import_reference", ["import", "REF", "--out", "x.pt"]),
    "finetune": ("finetune", ["finetune", "CKPT", "--epochs", "1"]),
    "predict": ("predict", ["predict", "model.onnx", "digit.png"]),
    "pack": ("pack", ["pack", "CKPT", "--out", "model"]),
    "fleet plan": ("fleet_plan", ["fleet", "plan", "FLEET.toml"]),
    "fleet check": ("fleet_check", ["fleet", "check", "manifest.json"]),
}


@pytest.mark.parametrize("name", sorted(API_CALLS))
def test_command_calls_the_python_api(name, monkeypatch, tmp_path):
    """One code path: the command hands its parsed options to the API function of the same job."""
    import us3l.api.commands
    import us3l.api.model
    from us3l.core.errors import ConfigError

    func, args = API_CALLS[name]
    seen = {}

    def spy(*a, **kw):
        seen.update(kw, _args=a)
        raise ConfigError(f"spy {func} called")

    import us3l.api.fleet

    api = us3l.api.model if func in ("load", "import_reference") else us3l.api.commands  # beside SlimmableModel
    if func.startswith("fleet_"):
        api = us3l.api.fleet
        monkeypatch.chdir(tmp_path)
        (tmp_path / args[-1]).write_text("")  # the argument must exist
    monkeypatch.setattr(api, func, spy)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and f"spy {func} called" in res.output, res.output
    assert seen, f"us3l {name} did not call us3l.api.{func}"
