"""The documented example profile file stays valid."""

from pathlib import Path

from us3l.benchmarks.devices import load_profiles

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "us3l-devices.example.toml"


def test_documented_example_parses():
    profiles = load_profiles(EXAMPLE)
    assert set(profiles) == {"orin", "edge-cpu"}
    assert profiles["orin"].jetson and profiles["orin"].runner == "trtexec" and profiles["orin"].power_modes == (0, 2)
    assert profiles["edge-cpu"].runner == "onnxruntime" and profiles["edge-cpu"].threads == 4
