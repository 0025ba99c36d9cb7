"""Choosing the width: accuracy table, Pareto front, budget, no-fit message and bisection."""

import json

import pytest

from us3l.benchmarks.search import width_grid
from us3l.benchmarks.choice import accuracy_for, bisect_widest, choose, distinct_configs, load_accuracy, pareto_front
from us3l.core.errors import ConfigError, DataError
from us3l.core.width import channels_at

ROWS = [  # latency grows with width; accuracy saturates (0.75 is dominated by 0.5: slower and worse)
    {"width": 0.25, "p50_ms": 1.0, "p95_ms": 1.2, "accuracy": 0.80},
    {"width": 0.5, "p50_ms": 2.0, "p95_ms": 2.5, "accuracy": 0.90},
    {"width": 0.75, "p50_ms": 3.0, "p95_ms": 3.6, "accuracy": 0.89},
    {"width": 1.0, "p50_ms": 5.0, "p95_ms": 6.0, "accuracy": 0.93},
]


def test_pareto_front_drops_dominated_width():
    assert [ROWS[i]["width"] for i in pareto_front(ROWS, "p50")] == [0.25, 0.5, 1.0]
    no_acc = [{k: v for k, v in r.items() if k != "accuracy"} for r in ROWS]
    assert len(pareto_front(no_acc, "p50")) == 4  # wider is better without accuracies


def test_budget_picks_most_accurate_within_budget():
    c = choose(ROWS, budget_ms=4.0, metric="p95")
    assert c["chosen"]["width"] == 0.5  # 0.75 fits but is less accurate
    assert c["chosen"]["latency_ms"] == 2.5 and "most accurate" in c["reason"]
    assert choose(ROWS, 100.0, "p50")["chosen"]["width"] == 1.0


def test_budget_without_accuracy_picks_widest():
    rows = [{k: v for k, v in r.items() if k != "accuracy"} for r in ROWS]
    c = choose(rows, budget_ms=4.0, metric="p95")
    assert c["chosen"]["width"] == 0.75 and "widest" in c["reason"]


def test_nothing_fits_names_fastest():
    c = choose(ROWS, budget_ms=0.5, metric="p95")
    assert c["chosen"] is None
    assert c["reason"] == "no width meets p95 <= 0.5 ms; the fastest is width 0.25 at 1.200 ms"
    assert c["fastest"] == {"width": 0.25, "precision": "fp32", "latency_ms": 1.2}


@pytest.mark.parametrize("kwargs,msg", [({"budget_ms": 0}, "budget must be > 0"),
                                        ({"budget_ms": 1, "metric": "p42"}, "valid: p50, p90, p95, p99, mean")])
def test_choose_validation(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        choose(ROWS, **kwargs)


def test_bisection_on_synthetic_monotone_latency():
    latency = [0.5 + 0.3 * i ** 1.5 for i in range(40)]  # monotone
    calls = []

    def fits(i):
        calls.append(i)
        return latency[i] <= 10.0

    index, probed = bisect_widest(40, fits)
    assert index == max(i for i in range(40) if latency[i] <= 10.0)
    assert probed == calls and len(probed) <= 2 + 6  # log2(40) ~ 5.3
    assert bisect_widest(40, lambda i: False) == (None, [0])
    assert bisect_widest(40, lambda i: True)[0] == 39
    assert bisect_widest(1, lambda i: True) == (0, [0])
    assert bisect_widest(0, lambda i: True) == (None, [])


def test_distinct_configs_follow_the_channel_step_function():
    grid = width_grid(0.25, 1.0, 0.01)
    assert grid[0] == 0.25 and grid[-1] == 1.0
    groups = distinct_configs(grid, lambda w: (channels_at(64, w), channels_at(512, w)))
    widths = [w for g in groups for w in (g[0], g[1])]
    assert widths == sorted(widths) and groups[0][0] == 0.25 and groups[-1][1] == 1.0
    for (lo, hi), (nlo, _) in zip(groups, groups[1:]):  # neighbours differ, members agree
        assert (channels_at(64, lo), channels_at(512, lo)) == (channels_at(64, hi), channels_at(512, hi))
        assert (channels_at(64, hi), channels_at(512, hi)) != (channels_at(64, nlo), channels_at(512, nlo))
    assert len(groups) < len(grid)


def test_accuracy_table_formats(tmp_path):
    full = tmp_path / "accuracy.json"
    full.write_text(json.dumps({"checkpoint": "abc", "protocol": {"k": 20},
                                "results": [{"width": 0.25, "knn": 0.7}, {"width": 0.5, "knn": 0.8, "linear": 0.85}]}))
    table = load_accuracy(full)  # rows without a precision (files from before precisions) are fp32
    assert table[(0.25, "fp32")]["accuracy"] == 0.7 and table[(0.25, "fp32")]["metric"] == "knn"
    assert table[(0.5, "fp32")]["accuracy"] == 0.85 and table[(0.5, "fp32")]["metric"] == "linear"
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps([{"width": 1.0, "knn": 0.9}]))
    assert load_accuracy(bare)[(1.0, "fp32")]["accuracy"] == 0.9
    assert accuracy_for(0.3, [0.25], table)["accuracy"] == 0.7  # an alias is the same network
    assert accuracy_for(0.3, [], table) is None


@pytest.mark.parametrize("content,msg", [("{", "not JSON"), ('{"results": 3}', "no 'results' list"),
                                         ('[{"knn": 1}]', "row 0 has no 'width'"),
                                         ('[{"width": 0.5}]', "row 0 has none of"),
                                         ('[{"width": 0.5, "precision": "int4", "knn": 1}]', "valid: fp32, fp16, int8")])
def test_accuracy_table_errors(tmp_path, content, msg):
    path = tmp_path / "a.json"
    path.write_text(content)
    with pytest.raises(DataError, match=msg):
        load_accuracy(path)


def test_rows_without_the_metric_are_skipped():
    rows = [dict(ROWS[0], p95_ms=None), ROWS[1]]  # e.g. a TRT 8.4 stdout fallback has no p95
    assert choose(rows, 10.0, "p95")["chosen"]["width"] == 0.5
    assert pareto_front(rows, "p95") == [1]
    with pytest.raises(ConfigError, match="choose another --metric"):
        choose([rows[0]], 10.0, "p95")


PAIRS = [  # int8 is ~2x faster at the same width and loses a little accuracy
    {"width": 0.5, "precision": "fp32", "p95_ms": 2.8, "accuracy": 0.90},
    {"width": 1.0, "precision": "fp32", "p95_ms": 5.0, "accuracy": 0.93},
    {"width": 0.5, "precision": "int8", "p95_ms": 1.1, "accuracy": 0.895},
    {"width": 1.0, "precision": "int8", "p95_ms": 2.6, "accuracy": 0.925},
]


def test_choice_over_width_and_precision_and_one_front():
    c = choose(PAIRS, budget_ms=3.0, metric="p95")
    assert (c["chosen"]["width"], c["chosen"]["precision"]) == (1.0, "int8")  # beats fp32 0.5 within 3 ms
    assert (c["next"]["width"], c["next"]["precision"]) == (1.0, "fp32")  # what a larger budget would buy
    assert [(PAIRS[i]["width"], PAIRS[i]["precision"]) for i in pareto_front(PAIRS, "p95")] == \
        [(0.5, "int8"), (1.0, "int8"), (1.0, "fp32")]  # fp32 0.5 is dominated by int8 1.0


def test_unknown_accuracy_is_not_borrowed_from_fp32():
    table = {(0.5, "fp32"): {"accuracy": 0.9}, (1.0, "fp32"): {"accuracy": 0.93}}
    assert accuracy_for(1.0, [], table, "int8") is None and accuracy_for(1.0, [], table)["accuracy"] == 0.93
    rows = [dict(r, accuracy=None) if r["precision"] == "int8" else r for r in PAIRS]
    c = choose(rows, budget_ms=3.0, metric="p95")
    assert (c["chosen"]["width"], c["chosen"]["precision"]) == (0.5, "fp32")  # an unrated int8 is not ranked
    assert {(p["width"], p["precision"]) for p in c["unrated"]} == {(0.5, "int8"), (1.0, "int8")}
    assert "no measured accuracy" in c["reason"]
    assert all(rows[i]["precision"] == "fp32" for i in pareto_front(rows, "p95"))


def test_noise_straddle_names_the_pairs_noise_could_flip():
    from us3l.benchmarks.run import noise_straddle

    rows = [dict(r, ci_ms={"p95": [r["p95_ms"] * 0.9, r["p95_ms"] * 1.1]}) for r in PAIRS]
    c = choose(rows, budget_ms=2.7, metric="p95")  # int8 1.0: 2.6 ms, CI up to 2.86 > 2.7
    assert [(s["role"], s["width"], s["precision"]) for s in noise_straddle(c, 2.7, "p95")] == [("chosen", 1.0, "int8")]
    assert noise_straddle(choose(rows, 4.0, "p95"), 4.0, "p95") == []  # 2.6*1.1 < 4 and 5*0.9 > 4
