"""perf/fmnist_claims.py runs end to end in its tiny setting and writes every number it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "fmnist_claims.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"}


def _run(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--work", str(work), *args],
                          capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def seed_100(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny comparison (seed 100), shared by the tests below."""
    root = tmp_path_factory.mktemp("claims")
    out = root / "claims.json"
    return out, _run(root / "w", "--json", str(out))


@pytest.mark.slow
def test_tiny_comparison_writes_the_table_and_json(seed_100):
    out, proc = seed_100
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert data["settings"]["train_size"] == 128 and data["settings"]["test_size"] == 64
    runs = {(r["method"], r["width"]) for r in data["runs"]}
    assert runs == {("us3l", None), ("naive", None), ("random", None),
                    *(("individual", w) for w in (0.25, 0.5, 0.75, 1.0))}
    for r in data["runs"]:
        widths = ["0.25", "0.5", "0.75", "1.0"] if r["width"] is None else [str(r["width"])]
        assert sorted(r["knn"]) == sorted(widths) and all(0 <= a <= 1 for a in r["knn"].values())
        assert set(r["linear"]) == {"0.25", "1.0"} & set(widths)
        assert r["collapse"] and all(c["std_ratio"] > 0 and c["eff_rank"] >= 1 for c in r["collapse"])
    assert 0.5 < data["raw_pixels_knn"] <= 1.0
    assert {g["goal"].split()[0] for g in data["goals"]} == {"US3L"} and len(data["goals"]) == 3
    assert "raw pixels" in proc.stdout and "collapse monitor" in proc.stdout
    assert max(len(ln) for ln in proc.stdout.splitlines()) <= 80
    # the pixel kNN in the JSON is the one printed
    assert f"{100 * data['raw_pixels_knn']:.1f}" in proc.stdout


def test_bad_sizes_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--epochs", "0", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "must be >= 1" in proc.stderr


@pytest.mark.slow
def test_seeds_from_two_invocations_are_reported_together(seed_100, tmp_path):
    first, proc = seed_100
    both = tmp_path / "both.json"
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        return _run(tmp_path / "w", *args)

    clash = run("--include", str(first))  # seed 100 again
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1 and "us3l_s100" in clash.stderr
    proc = run("--first-seed", "101", "--include", str(first), "--json", str(both))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(both.read_text())
    assert data["settings"]["seeds"] == 2 and data["first_seed"] == 101 and data["included"] == [str(first)]
    assert sorted({r["seed"] for r in data["runs"]}) == [100, 101] and len(data["runs"]) == 14
    earlier = json.loads(first.read_text())["runs"]
    assert [r for r in data["runs"] if r["seed"] == 100] == earlier  # included as written, not re-run
    assert all(len(v) == 2 for v in data["summary"]["us3l"]["knn"].values())
    assert "2 seed(s)" in proc.stdout and "±" in proc.stdout


def test_include_with_another_protocol_exit_2(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {"train_size": 10_000, "test_size": 2000, "epochs": 4}, "runs": []}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--include", str(other), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "protocol differs" in proc.stderr
    assert "train_size 10000 vs 128" in proc.stderr


def test_include_of_a_file_that_is_not_ours_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--include", str(bad), "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "bad.json: not a --json file" in proc.stderr
