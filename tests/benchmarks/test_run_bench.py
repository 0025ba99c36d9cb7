"""``run_bench`` on this CPU: lookup-table reuse, --force, accuracy join, budget, search, reports.

The exporter call is replaced by the fixture export (slice_to_width + torch.onnx.export) so these
tests do not depend on the exporters package; the CLI test exercises the real exporter.
"""

from __future__ import annotations

import csv
import json

import pytest

from us3l.benchmarks import BenchConfig, run_bench
from us3l.benchmarks.rows import BenchRow
from us3l.benchmarks.search import search_width
from us3l.core.errors import ConfigError

TINY = dict(arch="us_resnet_mini", widths="0.25,0.5,1.0", duration_s=0.05, rounds=2, warmup_ms=10, threads=1)


def test_cached_rerun_reuses_artifacts_and_points(tmp_path, fixture_exporter):
    out = tmp_path / "out"
    first = run_bench(BenchConfig(**TINY, out_dir=out, budget_ms=1000.0)).report
    assert fixture_exporter == [[0.25, 0.5, 1.0]]
    assert not any(r["cached"] for r in first["results"])
    second = run_bench(BenchConfig(**TINY, out_dir=out, budget_ms=1000.0)).report
    assert fixture_exporter == [[0.25, 0.5, 1.0]]  # no new export
    assert all(r["cached"] for r in second["results"])
    assert [r["p50_ms"] for r in second["results"]] == [r["p50_ms"] for r in first["results"]]
    lut = json.loads((out / "lut.json").read_text())
    key = next(iter(lut["points"]))
    fp, runner, sha, batch, precision, threads, timing = key.split("|")
    assert (fp, runner, batch, precision, threads) == (first["fingerprint"], "onnxruntime", "1", "fp32", "1")
    assert timing == "d0.05r2w10"  # methodology: duration, rounds, warm-up
    assert sha in {r["sha256"] for r in first["results"]}
    forced = run_bench(BenchConfig(**TINY, out_dir=out, force=True)).report
    assert len(fixture_exporter) == 2 and not any(r["cached"] for r in forced["results"])
    other_threads = run_bench(BenchConfig(**{**TINY, "threads": 2}, out_dir=out)).report
    assert not any(r["cached"] for r in other_threads["results"])  # threads is part of the key
    quick = run_bench(BenchConfig(**{**TINY, "iterations": 3, "rounds": 1}, out_dir=out)).report
    assert not any(r["cached"] for r in quick["results"])  # a quick run does not reuse careful points...
    careful = run_bench(BenchConfig(**TINY, out_dir=out)).report
    assert all(r["cached"] for r in careful["results"])  # ...nor stand in for them later


def test_report_and_table_name_files_from_their_folder_and_move_with_it(tmp_path, fixture_exporter):
    out = tmp_path / "out"
    first = run_bench(BenchConfig(**TINY, out_dir=out, budget_ms=1000.0)).report
    for name in ("report.json", "lut.json", "latency.csv"):
        assert str(tmp_path) not in (out / name).read_text(), name  # no absolute path of this machine
    assert first["deploy"]["artifact"].startswith("artifacts/") and (out / first["deploy"]["artifact"]).is_file()
    moved = tmp_path / "elsewhere"
    out.rename(moved)  # the folder moves as one unit: its table still finds its exported files
    again = run_bench(BenchConfig(**TINY, out_dir=moved, budget_ms=1000.0)).report
    assert fixture_exporter == [[0.25, 0.5, 1.0]] and all(r["cached"] for r in again["results"])
    assert (moved / again["deploy"]["artifact"]).is_file()


def _row(width, value, sha, protocol="knn", **extra):
    return {"width": width, protocol: value, "protocol": protocol, "outputs": "features", "precision": "fp32",
            "source": "artifact", "sha256": sha, **extra}


def test_reports_accuracy_join_and_choice(tmp_path, fixture_exporter):
    out = tmp_path / "out"
    first = run_bench(BenchConfig(**TINY, out_dir=out)).report
    sha = {r["width"]: r["sha256"] for r in first["results"]}
    acc = tmp_path / "accuracy.json"
    acc.write_text(json.dumps({"format": 2, "checkpoint": None, "results": [
        _row(0.25, 0.70, sha[0.25]), _row(0.5, 0.95, sha[0.5]), _row(1.0, 0.90, sha[1.0]),
        _row(1.0, 0.60, sha[1.0], "linear"),  # the same file, two protocols: linear is preferred
        _row(1.0, 0.99, "f" * 64), _row(0.5, 0.99, "e" * 64, precision="int8")]}))  # other files: never joined
    report = run_bench(BenchConfig(**TINY, out_dir=out, accuracy=acc, budget_ms=10_000.0, metric="p50")).report
    by_width = {r["width"]: r for r in report["results"]}
    assert [by_width[w]["accuracy"] for w in (0.25, 0.5, 1.0)] == [0.70, 0.95, 0.60]
    assert [by_width[w]["accuracy_protocol"] for w in (0.25, 0.5, 1.0)] == ["knn", "knn", "linear"]
    assert all(r["sha256"] == sha[r["width"]] and r["outputs"] == "features" for r in report["results"])
    assert report["chosen"]["width"] == 0.5 and report["chosen"]["accuracy"] == 0.95  # most accurate, not widest
    deploy = report["deploy"]  # names the timed file, with its hash and its own accuracy
    assert deploy["sha256"] == sha[0.5] and deploy["artifact"] == by_width[0.5]["artifact"]
    assert (deploy["accuracy"], deploy["accuracy_protocol"], deploy["outputs"]) == (0.95, "knn", "features")
    assert "most accurate" in report["choice"]["reason"]
    assert 1.0 not in report["pareto_widths"] or report["results"][2]["p50_ms"] < report["results"][1]["p50_ms"]
    rows = list(csv.DictReader((out / "latency.csv").open()))
    assert [float(r["width"]) for r in rows] == [0.25, 0.5, 1.0] and rows[1]["accuracy"] == "0.95"
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "report.json").read_text())
    assert saved["results"][0].keys() >= {"width", "aliases", "channels", "macs", "params", "accuracy", "p50_ms",
                                          "p90_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "throughput", "batch",
                                          "runner", "device"}


def test_no_width_fits(tmp_path, fixture_exporter):
    report = run_bench(BenchConfig(**TINY, out_dir=tmp_path, budget_ms=1e-6)).report
    assert report["chosen"] is None
    assert report["choice"]["reason"].startswith("no width meets p95 <= 1e-06 ms; the fastest is width")


def test_search_with_real_measurement_and_default_cache(tmp_path, fixture_exporter, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    report = run_bench(BenchConfig(**{**TINY, "widths": "0.25,1.0"}, budget_ms=1e6, search=True)).report
    first, last = report["search"]["probe_widths"]  # narrowest config (its widest width), then 1.0
    assert report["chosen"]["width"] == last == 1.0 and 0.25 <= first < 0.3
    assert (tmp_path / "cache" / "us3l" / "lut.json").is_file()  # no --out: the user cache
    assert (tmp_path / "us3l-bench" / "report.json").is_file()


def test_search_bisects_distinct_configs_on_a_synthetic_latency(tmp_path):
    from us3l.benchmarks.artifacts import ModelSource
    from us3l.core.models import get_model
    from us3l.core.slicing import channel_config

    net = get_model("us_resnet18_cifar")
    measured = []

    def fake_measure(w):  # latency ~ MACs ~ sum of squared channels: monotone step function of width
        measured.append(w)
        return BenchRow(width=w, p95_ms=sum(c * c for c in channel_config(net, w).values()) / 1e5)

    budget = fake_measure(0.6).p95_ms
    measured.clear()
    out = search_width(ModelSource(arch="us_resnet18_cifar"), None, 0.25, 1.0, 0.01, 1, budget, "p95", tmp_path,
                       "fp32", None, measure=fake_measure)
    lo, hi = out.width_range
    assert lo <= 0.6 <= hi and out.width == hi  # the widest width with 0.6's channels
    assert len(measured) <= 2 + 7 and out.configs > 20 and all(p.searched for p in out.probes)
    assert channel_config(net, hi) == channel_config(net, 0.6)


def test_config_validation():
    with pytest.raises(ConfigError, match="exactly one"):
        BenchConfig()
    with pytest.raises(ConfigError, match="--search needs --budget-ms"):
        BenchConfig(arch="x", search=True)
    with pytest.raises(ConfigError, match="valid: fp32, fp16, int8"):
        BenchConfig(arch="x", precision="bf16")


def test_checkpoint_ladder_accuracy_beside_it_and_torch_runner(tmp_path, fixture_exporter):
    from us3l.core.bn import bn_stats
    from us3l.core.checkpoint import Checkpoint, save_checkpoint
    from us3l.core.models import get_model

    net = get_model("us_resnet_mini")
    ckpt = Checkpoint.from_model(net, method="untrained")
    for w in (0.25, 0.5, 1.0):  # the BN bank defines the ladder
        ckpt.add_bn_stats(w, bn_stats(net, w))
    path = tmp_path / "mini.pt"
    digest = save_checkpoint(ckpt, path)
    # PyTorch rows of this checkpoint state: what the torch runner times
    (tmp_path / "accuracy.json").write_text(json.dumps(
        [{"width": w, "knn": a, "protocol": "knn", "outputs": "features", "source": "pytorch", "sha256": digest}
         for w, a in ((0.25, 0.8), (0.5, 0.9), (0.405, 0.88), (1.0, 0.85))]))
    report = run_bench(BenchConfig(checkpoint=path, runner="torch", threads=1, duration_s=0.05, rounds=2,
                                   warmup_ms=10, budget_ms=1000.0, out_dir=tmp_path / "out")).report
    # the default ladder, plus the bank's widths, plus the evaluated ones: an extra eval adds, never replaces
    assert report["config"]["widths_resolved"] == [0.25, 0.405, 0.5, 0.75, 1.0]
    assert report["accuracy_file"] == "../accuracy.json"  # named from the report's folder, tmp_path/"out"
    assert report["runner"] == "torch" and report["chosen"]["width"] == 0.5
    assert {r["width"]: r["accuracy"] for r in report["results"]} == {0.25: 0.8, 0.405: 0.88, 0.5: 0.9, 0.75: None,
                                                                      1.0: 0.85}


def _bench_checkpoint(tmp_path):
    from us3l.core.bn import bn_stats
    from us3l.core.checkpoint import Checkpoint, save_checkpoint
    from us3l.core.models import get_model

    net = get_model("us_resnet_mini")
    ckpt = Checkpoint.from_model(net, method="untrained")
    for w in (0.25, 1.0):
        ckpt.add_bn_stats(w, bn_stats(net, w))
    path = tmp_path / "mini.pt"
    return path, save_checkpoint(ckpt, path)


@pytest.mark.parametrize("case", ["current", "stale", "snapped"])
def test_accuracy_join_refuses_stale_or_other_divisor_tables(tmp_path, fixture_exporter, case):
    path, content_hash = _bench_checkpoint(tmp_path)
    recorded = "0" * 64 if case == "stale" else content_hash
    (tmp_path / "accuracy.json").write_text(json.dumps({  # a format-1 table (one protocol for the file)
        "checkpoint": recorded, "protocol": {"method": "knn", "divisor": 8},
        "results": [{"width": 0.25, "knn": 0.9, "sha256": content_hash}, {"width": 1.0, "knn": 0.8, "sha256": content_hash}]}))
    snap = 16 if case == "snapped" else 8
    report = run_bench(BenchConfig(checkpoint=path, threads=1, iterations=3, rounds=1, warmup_ms=1, snap=snap,
                                   runner="torch", budget_ms=1000.0, out_dir=tmp_path / "out", plot=False)).report
    accuracies = [r["accuracy"] for r in report["results"]]  # default widths 0.25, 0.5, 0.75, 1.0
    if case == "current":
        assert report["accuracy_note"] is None and accuracies == [0.9, None, None, 0.8]
        assert report["chosen"]["width"] == 0.25
        return
    assert accuracies == [None] * 4 and "(no accuracy table)" in report["choice"]["reason"]
    assert ("another checkpoint" if case == "stale" else "divisor-8") in report["accuracy_note"]


def test_choice_at_the_edge_of_its_interval_is_remeasured_then_stated(tmp_path):
    """A budget equal to a pair's measured p95 puts its interval across the budget: bench
    re-measures it (bounded by --remeasure) and says whether the choice is still within noise."""
    common = dict(arch="us_resnet_mini", runner="torch", threads=1, widths="0.25,0.5", iterations=40, rounds=2,
                  warmup_ms=5, out_dir=tmp_path / "out", plot=False)
    first = run_bench(BenchConfig(**common)).report
    wide = next(r for r in first["results"] if r["width"] == 0.5)
    assert wide["ci_ms"]["p95"][0] <= wide["p95_ms"] <= wide["ci_ms"]["p95"][1] and wide["cov"] >= 0
    report = run_bench(BenchConfig(**common, budget_ms=wide["p95_ms"], remeasure=1)).report  # cached points
    noise = report["choice"]["noise"]
    assert noise["remeasured"] == 1 and noise["limit"] == 1
    assert any(r.get("remeasured") == 1 for r in report["results"])
    assert noise["within_noise"] == bool(noise["pairs"]) and (("message" in noise) == noise["within_noise"])
    if noise["within_noise"]:
        assert "within noise" in noise["message"]


def test_bench_takes_a_packed_model_directory_as_export_does(tmp_path, fixture_exporter):
    """``us3l bench DIR``: the directory's network is measured and its accuracy.json joined; the
    lookup table keys it by its weights and config, so a second run reuses every point."""
    from us3l.core.checkpoint import load_checkpoint
    from us3l.core.modelfile import pack_checkpoint

    path, content_hash = _bench_checkpoint(tmp_path)
    model_dir = pack_checkpoint(load_checkpoint(path), tmp_path / "model")
    cfg = BenchConfig(checkpoint=model_dir, threads=1, iterations=3, rounds=1, warmup_ms=1, widths="0.25,1.0",
                      out_dir=tmp_path / "out", plot=False)
    timed = {r["width"]: r["sha256"] for r in run_bench(cfg).report["results"]}  # the files it times
    (model_dir / "accuracy.json").write_text(json.dumps({"format": 2, "checkpoint": content_hash, "results": [
        {"width": 0.25, "knn": 0.9, "protocol": "knn", "outputs": "features", "source": "artifact",
         "sha256": timed[0.25]}]}))
    first = run_bench(cfg).report
    assert (tmp_path / "out" / first["accuracy_file"]).resolve() == (model_dir / "accuracy.json").resolve() and first["results"][0]["accuracy"] == 0.9
    assert first["results"][0]["cached"] and first["results"][1]["accuracy_source"] == "unknown"
    assert len(fixture_exporter) == 1
