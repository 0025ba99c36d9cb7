"""Two-process ``torchrun`` training on CPU (gloo): identical widths and identical weights on both ranks,
without per-iteration width broadcasts and with DDP's ``broadcast_buffers=False``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from us3l.core.checkpoint import load_checkpoint

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    import us3l.trainer.loop as loop
    from us3l.trainer.config import TrainConfig

    out, mode = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(out_dir=out, image_size=8, batch_size=16, proj_hidden_dim=32, proj_out_dim=16,
                      pred_hidden_dim=32, epochs=2, max_steps_per_epoch=3, schedule="", log_interval=1,
                      collapse_batch=32, tensorboard=False, threads=1)
    seen = []
    original = loop.iteration_widths
    def recording(*args, **kwargs):
        widths = original(*args, **kwargs)
        seen.append(widths)
        return widths
    loop.iteration_widths = recording
    t = loop.Trainer(cfg)
    rank = dist.get_rank()
    if mode == "diverge":
        t.width_rng.seed(1000 + rank)  # out of step: the per-epoch agreement check must stop the run
    assert type(t.model).__name__ == "DistributedDataParallel"
    assert t.model.broadcast_buffers is False and t.model.gradient_as_bucket_view is True
    broadcasts = []
    original_broadcast = dist.broadcast
    dist.broadcast = lambda *a, **k: broadcasts.append(1) or original_broadcast(*a, **k)
    t.fit()
    dist.broadcast = original_broadcast
    with open(f"{out}/broadcasts_rank{rank}.json", "w") as fh:
        json.dump(len(broadcasts), fh)
    params = {n: p.detach() for n, p in t.raw_model.named_parameters()}
    torch.save(params, f"{out}/params_rank{rank}.pt")
    with open(f"{out}/widths_rank{rank}.json", "w") as fh:
        json.dump(seen, fh)
""")


def _run_worker(tmp_path, mode):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(out),
           mode]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out, done


@pytest.mark.slow
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    """Identical widths and weights on both ranks with ``broadcast_buffers=False`` (BN uses batch
    statistics in SSL) and no width broadcast: the old trainer made two blocking ``dist.broadcast``
    calls per iteration (12 here); now there are none."""
    out, done = _run_worker(tmp_path, "same")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert [json.loads((out / f"broadcasts_rank{r}.json").read_text()) for r in (0, 1)] == [0, 0]
    w0, w1 = (json.loads((out / f"widths_rank{r}.json").read_text()) for r in (0, 1))
    assert len(w0) == 6 and w0 == w1
    assert all(len(w) == 3 and w[0] == 1.0 and w[-1] == 0.25 for w in w0)
    p0, p1 = (torch.load(out / f"params_rank{r}.pt", weights_only=True) for r in (0, 1))
    assert p0.keys() == p1.keys()
    assert all(torch.equal(p0[k], p1[k]) for k in p0), [k for k in p0 if not torch.equal(p0[k], p1[k])][:5]
    ckpt = load_checkpoint(out / "checkpoint.pt")  # only rank 0 writes; it holds both ranks' RNG states
    assert ckpt.epoch == 2 and len(ckpt.training["rng"]) == 2 and ckpt.training["world_size"] == 2
    assert not torch.equal(ckpt.training["rng"][0]["torch"], ckpt.training["rng"][1]["torch"])
    assert torch.equal(ckpt.model["conv1.weight"], p0["backbone.conv1.weight"])
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".jsonl") == ["metrics.jsonl"]


@pytest.mark.slow
def test_width_generators_out_of_step_stop_with_a_clear_error(tmp_path):
    """Item 6: ranks whose width draws disagree fail after the epoch with one clear message.

    Old behaviour caught: rank 0's widths were broadcast every iteration (two host syncs), so
    this run trained silently; without any check it would average gradients of different widths.
    """
    out, done = _run_worker(tmp_path, "diverge")
    assert done.returncode != 0
    assert "ranks drew different width lists in epoch 1" in done.stdout + done.stderr
    assert not (out / "checkpoint.pt").exists()  # stopped before saving epoch 1


@pytest.mark.slow
def test_torchrun_cli_prints_one_summary(tmp_path):
    """The documented launch form: only rank 0 draws progress and prints the summary."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
           "us3l.cli.main", "train", "--epochs", "1", "--max-steps-per-epoch", "2", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert done.stdout.count("checkpoint:") == 1 and done.stdout.count("training summary") == 1, done.stdout
    assert load_checkpoint(out / "checkpoint.pt").epoch == 1
