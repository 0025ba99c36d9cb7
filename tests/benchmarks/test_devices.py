"""Device built-ins and TOML profiles, including the typo error (file, line, valid keys)."""

from pathlib import Path

import pytest

from us3l.benchmarks.devices import VALID_KEYS, get_device, list_devices, load_profiles, user_config_file
from us3l.core.errors import ConfigError, UnknownNameError

GOOD = """\
# lab devices
[devices.orin]
host = "orin.local"
user = "ubuntu"
port = 2222
identity_file = "~/.ssh/id_ed25519"
runner = "trtexec"
precision = "fp16"
jetson = true
power_modes = [0, 2]
ssh_options = ["ProxyJump=bastion"]

[devices.pi]
host = "pi"
runner = "onnxruntime"
threads = 4
python = "/opt/venv/bin/python"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "us3l-devices.toml"
    path.write_text(text)
    return path


def test_builtins_without_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert list_devices() == ["cpu", "cuda", "jetson"]
    assert get_device("cpu").runner == "onnxruntime" and not get_device("cpu").is_remote
    assert get_device("jetson").trtexec == "/usr/src/tensorrt/bin/trtexec"
    assert user_config_file() == tmp_path / "cfg" / "us3l" / "devices.toml"


def test_profiles_parsed(tmp_path):
    profiles = load_profiles(write(tmp_path, GOOD))
    orin = profiles["orin"]
    assert orin.is_remote and orin.port == 2222 and orin.power_modes == (0, 2)
    assert orin.ssh_options == ("ProxyJump=bastion",) and orin.trtexec == "/usr/src/tensorrt/bin/trtexec"
    assert profiles["pi"].threads == 4 and profiles["pi"].python == "/opt/venv/bin/python"


def test_project_file_in_cwd_is_read_only_when_named(tmp_path, monkeypatch):
    """A us3l-devices.toml that came with a cloned folder decides which commands run: it is not
    trusted silently (issue 15, class 7), only with --devices-file."""
    path = write(tmp_path, GOOD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nocfg"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownNameError, match="read only when named: pass --devices-file us3l-devices.toml"):
        get_device("pi")
    assert list_devices() == ["cpu", "cuda", "jetson"]
    assert get_device("pi", path).host == "pi"
    assert list_devices(path) == ["cpu", "cuda", "jetson", "orin", "pi"]


def test_user_config_file_is_the_fallback(tmp_path, monkeypatch):
    cfg = tmp_path / "cfg" / "us3l"
    cfg.mkdir(parents=True)
    (cfg / "devices.toml").write_text(GOOD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.chdir(tmp_path)  # no project file here
    assert get_device("orin").source == str(cfg / "devices.toml")


def test_typo_names_file_line_and_valid_keys(tmp_path):
    path = write(tmp_path, GOOD.replace('threads = 4', 'thread = 4'))
    with pytest.raises(ConfigError) as exc:
        load_profiles(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}:16: unknown key 'thread' in [devices.pi]; valid: ")
    assert all(k in msg for k in VALID_KEYS)


def test_wrong_type_and_bad_toml(tmp_path):
    path = write(tmp_path, GOOD.replace("port = 2222", 'port = "22"'))
    with pytest.raises(ConfigError, match=r":5: key 'port' in \[devices.orin\] must be int"):
        load_profiles(path)
    path = write(tmp_path, GOOD.replace("power_modes = [0, 2]", 'power_modes = ["max"]'))
    with pytest.raises(ConfigError, match="must be a list of integers"):
        load_profiles(path)
    path = write(tmp_path, "[devices.x]\nhost = \n")
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 2"):
        load_profiles(path)
    path = write(tmp_path, "[devices.cpu]\nhost = 'x'\n")
    with pytest.raises(ConfigError, match="is a built-in device"):
        load_profiles(path)
    path = write(tmp_path, "[device.x]\nhost = 'x'\n")
    with pytest.raises(ConfigError, match=r":1: unknown table or key 'device'"):
        load_profiles(path)


def test_unknown_device_lists_devices(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(UnknownNameError, match=r"unknown device 'orinn'; valid: cpu, cuda, jetson, orin, pi"):
        get_device("orinn", path)
