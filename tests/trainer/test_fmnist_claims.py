"""perf/fmnist_claims.py runs end to end in its tiny setting and writes every number it prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "perf" / "fmnist_claims.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "100"}


def _run(work: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--work", str(work), *args],
                          check=False, capture_output=True, text=True, timeout=300, env=ENV)


@pytest.fixture(scope="module")
def seed_100(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny comparison (seed 100), shared by the tests below."""
    root = tmp_path_factory.mktemp("claims")
    out = root / "claims.json"
    return out, _run(root / "w", "--json", str(out), "--plot", str(out.with_suffix(".png")))


@pytest.mark.slow
def test_tiny_comparison_writes_the_table_and_json(seed_100):
    out, proc = seed_100
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    st = data["settings"]
    assert (st["train_size"], st["test_size"], st["image_size"], st["augmentation"]) == (128, 64, 20, "gray")
    runs = {(r["method"], r["width"]) for r in data["runs"]}
    assert runs == {("us3l", None), ("naive", None), ("naive-contrastive", None), ("random", None), ("alone", 0.25)}
    for r in data["runs"]:
        widths = ["0.25", "0.5", "0.75", "1.0"] if r["width"] is None else [str(r["width"])]
        assert sorted(r["knn"]) == sorted(widths) and all(0 <= a <= 1 for a in r["knn"].values())
        assert set(r["linear"]) == {"0.25", "1.0"} & set(widths)
        assert r["collapse"] and all(c["std_ratio"] > 0 and c["eff_rank"] >= 1 for c in r["collapse"])
        # learning curves of the trained networks: kNN after every epoch at their smallest and largest width
        if r["method"] != "random":
            assert [p["epoch"] for p in r["curve"]] == [1, 2]
            assert {k for p in r["curve"] for k in p} - {"epoch", "knn_s"} == ({"0.25", "1.0"} if r["width"] is None
                                                                              else {"0.25"})
    assert 0.5 < data["raw_pixels"]["knn"] <= 1.0 and 0 < data["raw_pixels"]["linear"] <= 1.0
    goals = {g["goal"]: g for g in data["goals"]}
    assert set(goals) == {"US3L kNN at width 1.0 >= raw pixels - 1", "US3L >= random init + 10 at every width",
                          "US3L - naive (reference) at width 0.25 >= +1.0"}
    gap = goals["US3L - naive (reference) at width 0.25 >= +1.0"]
    tr = data["trend"]["per_seed"]["100"]
    assert gap["value"] == pytest.approx(100 * tr["end_point"], abs=0.01)
    assert set(tr["curve"]) == {"1", "2"} and gap["slope_points_per_epoch"] == pytest.approx(
        100 * (tr["curve"]["2"] - tr["curve"]["1"]), abs=1e-3)  # two points: the slope is their difference
    for text in ("raw pixels, kNN", "raw pixels, linear probe", "naive (reference)", "naive-contrastive",
                 "0.25 trained alone", "learning curves", "collapse monitor"):
        assert text in proc.stdout, text
    assert max(len(ln) for ln in proc.stdout.splitlines()) <= 100
    # the pixel figures in the JSON are the ones printed, and the PNG was written
    assert f"{100 * data['raw_pixels']['knn']:.1f}" in proc.stdout
    assert f"{100 * data['raw_pixels']['linear']:.1f}" in proc.stdout
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_sizes_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--epochs", "0", "--work", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "must be >= 1" in proc.stderr


@pytest.mark.slow
def test_seeds_from_two_invocations_are_reported_together(seed_100, tmp_path):
    first, proc = seed_100
    both = tmp_path / "both.json"
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def run(*args: str) -> subprocess.CompletedProcess:
        return _run(tmp_path / "w", *args)

    bad = run("--methods", "us3l,fancy")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "valid names are" in bad.stderr
    clash = run("--include", str(first))  # seed 100 again
    assert clash.returncode == 2 and clash.stderr.count("\n") == 1 and "us3l_s100" in clash.stderr
    proc = run("--first-seed", "101", "--methods", "us3l,naive", "--include", str(first), "--json", str(both))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(both.read_text())
    assert data["settings"]["seeds"] == 2 and data["first_seed"] == 101 and data["included"] == [str(first)]
    # a second seed of the pair the US3L - naive goal is about: the other rows keep their one seed
    assert sorted({r["seed"] for r in data["runs"]}) == [100, 101] and len(data["runs"]) == 7
    assert {r["method"] for r in data["runs"] if r["seed"] == 101} == {"us3l", "naive"}
    assert all(len(v) == 1 for v in data["summary"]["random"]["knn"].values())
    assert "random init (1 seed)" in proc.stdout
    # --methods none: the two files reported together, nothing trained
    again = tmp_path / "again.json"
    proc = run("--methods", "none", "--include", str(first), "--include", str(both), "--json", str(again))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "repeat run(s) alone_s100" in proc.stderr
    proc = run("--methods", "none", "--include", str(both), "--json", str(again))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(again.read_text())["runs"] == data["runs"] and "2 seed(s)" in proc.stdout
    earlier = json.loads(first.read_text())["runs"]
    assert [r for r in data["runs"] if r["seed"] == 100] == earlier  # included as written, not re-run
    assert all(len(v) == 2 for v in data["summary"]["us3l"]["knn"].values())
    assert "2 seed(s)" in proc.stdout and "±" in proc.stdout
    assert set(data["trend"]["per_seed"]) == {"100", "101"} and "2 seed(s)" in proc.stdout


def test_include_with_another_protocol_exit_2(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {"train_size": 10_000, "test_size": 2000, "epochs": 4}, "runs": []}))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--include", str(other), "--work", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "protocol differs" in proc.stderr
    assert "train_size 10000 vs 128" in proc.stderr


def test_include_of_a_file_that_is_not_ours_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--include", str(bad), "--work", str(tmp_path)],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "bad.json: not a --json file" in proc.stderr


def _module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fmnist_claims", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fmnist_claims", mod)  # dataclasses look their module up
    spec.loader.exec_module(sys.modules["fmnist_claims"])
    return sys.modules["fmnist_claims"]


def test_gap_slope_is_least_squares_over_the_last_epochs():
    """The US3L - naive trend at 0.25: per seed, the gap per epoch and its least-squares slope over the last N."""
    fc = _module()

    def job(kind, seed, curve, end):
        return fc.Job(kind, seed, {"knn": {0.25: end, 1.0: 0.8}, "linear": {}, "collapse": [],
                                   "curve": [{"epoch": e, "0.25": a, "1.0": 0.8} for e, a in enumerate(curve, 1)]})

    jobs = [job("us3l", 100, [0.70, 0.72, 0.75, 0.78], 0.79), job("naive", 100, [0.72, 0.73, 0.74, 0.75], 0.76),
            job("us3l", 101, [0.70, 0.70, 0.70, 0.70], 0.70), job("naive", 101, [0.71, 0.71, 0.71, 0.71], 0.715)]
    tr = fc.trend(jobs, last=3)
    s100 = tr["per_seed"][100]
    assert s100["curve"] == pytest.approx({"1": -0.02, "2": -0.01, "3": 0.01, "4": 0.03})
    assert s100["epochs"] == [2, 3, 4] and s100["slope_per_epoch"] == pytest.approx(0.02)  # (0.03 - -0.01) / 2
    assert s100["end_point"] == pytest.approx(0.03) and tr["per_seed"][101]["slope_per_epoch"] == pytest.approx(0.0)
    assert tr["end_point"] == pytest.approx(0.0075) and tr["slope_per_epoch"] == pytest.approx(0.01)
    goal = fc.goals({}, {"knn": 0.83, "linear": 0.84}, tr)[0]
    assert not goal["met"] and goal["slope_points_per_epoch"] == pytest.approx(1.0) and "slope is positive" in goal["note"]
    assert fc.slope({1: 0.5}, 3) is None


@pytest.mark.slow
def test_resume_evaluates_finished_runs_and_continues_shorter_ones(tmp_path):
    """--resume: a run stopped after epoch 1 of 2 continues from its checkpoint (its curve kept) and
    ends where an uninterrupted run ends; a finished run is evaluated without training; without
    --resume, or under another protocol, the runs in --work are refused in one line."""
    fc = _module()
    work = tmp_path / "w"
    st = replace(fc.Settings(train_size=128, test_size=64, epochs=2, batch_size=32, max_steps_per_epoch=1,
                             calib_batches=1, jobs=1, linear_epochs=2, eval_images=32, eval_bank=64), work=str(work))
    from us3l.core.data import write_fashion_mnist_subset
    from us3l.trainer.loop import Trainer

    write_fashion_mnist_subset(st.subset_root, st.train_size, st.test_size, None)
    job = fc.Job("us3l", 100)
    Trainer(st.train_config(job.method, 100, None, work / "runs" / job.name)).fit(until_epoch=1)  # "killed" after 1
    assert fc.held_epochs(job, st, True) == 1

    refused = _run(work, "--methods", "us3l")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "pass --resume" in refused.stderr
    other = _run(work, "--methods", "us3l", "--resume", "--epochs", "3")
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "epochs 1 vs 3" not in other.stderr
    assert "configuration differs" in other.stderr and "epochs 2 vs 3" in other.stderr

    first = tmp_path / "first.json"
    proc = _run(work, "--methods", "us3l", "--resume", "--json", str(first))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "us3l_s100: checkpoint holds 1 of 2 epoch(s): resuming training at epoch 2" in proc.stdout
    run = json.loads(first.read_text())["runs"][0]
    assert run["resumed_from_epoch"] == 1 and [p["epoch"] for p in run["curve"]] == [1, 2]

    # the same run uninterrupted (another --work): the same curve and the same accuracies
    straight = tmp_path / "straight.json"
    proc = _run(tmp_path / "w2", "--methods", "us3l", "--json", str(straight))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ref = json.loads(straight.read_text())["runs"][0]
    assert run["curve"] == [{**p, "knn_s": q["knn_s"]} for p, q in zip(ref["curve"], run["curve"])]
    assert run["knn"] == ref["knn"] and run["linear"] == ref["linear"]

    # finished: evaluated only, the same numbers again
    again = tmp_path / "again.json"
    proc = _run(work, "--methods", "us3l", "--resume", "--json", str(again))
    assert proc.returncode == 0 and "holds 2 of 2 epoch(s): evaluating it" in proc.stdout
    rerun = json.loads(again.read_text())["runs"][0]
    assert rerun["resumed_from_epoch"] == 2 and rerun["knn"] == run["knn"] and rerun["curve"] == run["curve"]
