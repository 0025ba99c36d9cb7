"""Width sampling (docs/method.md §8, §15.1, §15.12, §15.15): sandwich for any N, clamped schedule A, rank agreement."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from us3l.trainer.sampling import sample_widths, stage_lower_bound, width_digest, widths_for_iteration


@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_sandwich_has_n_widths_extremes_once_descending(n):
    for seed in range(50):
        widths = sample_widths(random.Random(seed), n, 0.25, 1.0)
        assert len(widths) == n
        assert widths.count(1.0) == 1 and widths.count(0.25) == 1
        assert widths[0] == 1.0 and widths[-1] == 0.25
        assert widths == sorted(widths, reverse=True)
        assert all(0.25 <= w <= 1.0 for w in widths)


def test_sampling_variants():
    assert sample_widths(random.Random(0), 3, 1.0, 1.0) == [1.0]
    free = sample_widths(random.Random(0), 4, 0.25, 1.0, sandwich=False)
    assert len(free) == 4 and free == sorted(free, reverse=True) and 1.0 not in free
    assert sample_widths(random.Random(3), 5, 0.25, 1.0) == sample_widths(random.Random(3), 5, 0.25, 1.0)
    with pytest.raises(ValueError):
        sample_widths(random.Random(0), 1, 0.25, 1.0)
    with pytest.raises(ValueError):
        sample_widths(random.Random(0), 3, 0.5, 0.25)


def test_schedule_a_stages_e400():
    expected = {0: 1.0, 99: 1.0, 100: 0.75, 199: 0.75, 200: 0.5, 299: 0.5, 300: 0.25, 399: 0.25}
    for epoch, lo_t in expected.items():
        assert stage_lower_bound(epoch, 400, 0.25, 1.0, "A") == pytest.approx(lo_t)
    assert widths_for_iteration(random.Random(0), 50, 400, 3, 0.25, 1.0) == [1.0]
    widths = widths_for_iteration(random.Random(0), 250, 400, 3, 0.25, 1.0)
    assert widths[0] == 1.0 and widths[-1] == 0.5 and len(widths) == 3


def test_schedule_a_clamped_for_e10_and_short_runs():
    # reference: epochs 8-9 of E=10 would get stage 5 -> lower bound 0.0; clamped to the last stage
    got = [stage_lower_bound(e, 10, 0.25, 1.0, "A") for e in range(10)]
    assert got == pytest.approx([1.0, 1.0, 0.75, 0.75, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    for epochs in (1, 2, 3):  # reference divides by zero for E < 4
        got = [stage_lower_bound(e, epochs, 0.25, 1.0, "A") for e in range(epochs)]
        assert got == pytest.approx([1.0, 0.75, 0.5][:epochs])
    for epochs in (5, 7, 13, 401):
        assert all(0.25 <= stage_lower_bound(e, epochs, 0.25, 1.0, "A") <= 1.0 for e in range(epochs))


def test_no_schedule_and_bad_schedule():
    assert stage_lower_bound(0, 400, 0.25, 1.0, None) == 0.25
    assert stage_lower_bound(0, 400, 0.25, 1.0, "") == 0.25
    with pytest.raises(ValueError, match="schedule"):
        stage_lower_bound(0, 400, 0.25, 1.0, "B")


def test_width_digest_chains_lists_and_is_cheap_to_compare():
    a = width_digest([1.0, 0.5, 0.25])
    assert len(a) == 8 and a == width_digest([1.0, 0.5, 0.25])
    assert width_digest([1.0, 0.25], a) != width_digest([1.0, 0.25], width_digest([1.0, 0.5, 0.26]))
    assert width_digest([1.0, 0.5]) != width_digest([0.5, 1.0])


def test_check_width_agreement_is_a_noop_on_one_process():
    from us3l.trainer.runtime import DistInfo, check_width_agreement

    check_width_agreement(DistInfo(), b"anything", 0)  # no process group, nothing to compare


_WORKER = textwrap.dedent("""
    import json, os, random, sys
    import torch, torch.distributed as dist
    from us3l.trainer.sampling import sample_widths, width_digest
    from us3l.trainer.runtime import DistInfo, WidthMismatchError, check_width_agreement
    from us3l.trainer.losses import MoCoV3Loss
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=rank, world_size=2)
    info = DistInfo(rank, 2, rank)
    same = sample_widths(random.Random(100), 4, 0.25, 1.0)  # identically seeded: identical draws
    check_width_agreement(info, width_digest(same), 0)
    own = sample_widths(random.Random(100 + rank), 4, 0.25, 1.0)  # deliberately different per rank
    try:
        check_width_agreement(info, width_digest(own), 5)
        error = ""
    except WidthMismatchError as exc:
        error = str(exc)
    torch.manual_seed(rank)
    q, k = torch.randn(3, 5), torch.randn(3, 5)
    parts = [torch.empty_like(k) for _ in range(2)]
    dist.all_gather(parts, k)
    local = MoCoV3Loss(0.2, gather_distributed=True)._ctr(q, k)
    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(torch.cat(parts), dim=1)
    ref = torch.nn.functional.cross_entropy(qn @ kn.t() / 0.2, torch.arange(3) + 3 * rank) * 0.4
    print(json.dumps({"same": same, "own": own, "error": error, "loss": float(local), "ref": float(ref)}))
    dist.destroy_process_group()
""")


@pytest.mark.slow
def test_width_agreement_check_two_gloo_ranks(tmp_path):
    """Identical draws pass; different draws raise on every rank (the old code broadcast instead)."""
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env_base = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(tmp_path / "rendezvous")], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={**env_base, "RANK": str(r)})
        for r in range(2)
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert outs[0]["same"] == outs[1]["same"] and outs[0]["own"] != outs[1]["own"]
    for out in outs:
        assert "ranks drew different width lists in epoch 5" in out["error"] and "--seed" in out["error"]
    for out in outs:  # opt-in all_gather of keys: labels offset by rank
        assert out["loss"] == pytest.approx(out["ref"], rel=1e-6)
