"""Training speed and memory of US3L (run by hand: ``python -m perf.train_speed``).

(a) Overhead of one US3L iteration: the time of ``train_step`` over widths ``[1.0, mid, 0.25]``
    divided by the sum of its constituent passes timed alone (the teacher's no-grad forward at
    1.0 plus, per width, the online forward + loss + backward). Goal <= 1.15. Peak RSS via psutil.
(b) Wall time of ``us3l train`` with no arguments (a subprocess) and the kNN accuracy of its
    checkpoint per width against a randomly initialised network of the same architecture.

Warm-up iterations first, then the median of timed repetitions (``time.perf_counter``; on CUDA
the device is synchronised inside the timed region).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from us3l.train.group_reg import GroupRegularizer
from us3l.train.recipes import get_recipe
from us3l.train.ssl_model import build_ssl_model
from us3l.train.step import StepParts, build_losses, train_step

WIDTHS = [1.0, 0.625, 0.25]


def _timed_interleaved(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median time of each function; one call of each per round, so load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def iteration_overhead(batch: int, repeats: int, warmup: int, device: torch.device) -> dict:
    """Ratio of one full US3L iteration to the sum of its forward/backward passes timed alone."""
    cfg = get_recipe("digits")
    torch.manual_seed(0)
    size = 16
    model = build_ssl_model(cfg.arch, {"input_size": size}, cfg.ssl, "us3l", cfg.proj_hidden_dim, cfg.proj_out_dim,
                            cfg.pred_hidden_dim).to(device)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    losses = build_losses("us3l", cfg.ssl, cfg.loss_temperature)
    parts = StepParts(model, model, opt, torch.amp.GradScaler(device.type, enabled=False), losses, "us3l",
                      GroupRegularizer(cfg.reg_lambda, total_epochs=cfg.epochs), False)
    x1, x2 = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    proc = psutil.Process()
    peak = [proc.memory_info().rss]

    def full() -> None:
        train_step(parts, x1, x2, WIDTHS, epoch=cfg.epochs - 1, ema_momentum=0.99)
        peak.append(proc.memory_info().rss)

    k = model.teacher_forward(x1, x2)

    def teacher() -> None:
        model.teacher_forward(x1, x2)

    def online(width: float, head: str, loss) -> None:
        model.zero_grad(set_to_none=True)
        q1, q2, _ = model(x1, x2, width, head)
        loss((q1, q2), (k[0], k[1])).backward()
        peak.append(proc.memory_info().rss)

    fns = {"iteration": full, "teacher_forward": teacher}
    for i, w in enumerate(WIDTHS):
        head, loss = ("none", losses.base) if i == 0 else ("aux", losses.distill)
        fns[f"fwd_bwd_{w}"] = lambda w=w, h=head, lf=loss: online(w, h, lf)
    parts_t = _timed_interleaved(fns, repeats, warmup, device)
    t_full = parts_t.pop("iteration")
    total = sum(parts_t.values())
    return {"batch": batch, "widths": WIDTHS, "iteration_s": t_full, "passes_s": parts_t, "sum_passes_s": total,
            "ratio": t_full / total, "peak_rss_mb": max(peak) / 2**20,
            "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "device": str(device)}


def default_run(out: Path) -> dict:
    """Time ``us3l train`` (no arguments but --out) and compare kNN per width with random init."""
    from us3l.train.evaluate import evaluate_checkpoint
    from us3l.core.checkpoint import Checkpoint, load_checkpoint
    from us3l.core.models import get_model

    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "us3l.cli.main", "train", "--out", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"us3l train failed:\n{done.stderr[-2000:]}")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_rss, child_cpu = usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime
    ckpt = load_checkpoint(out / "checkpoint.pt")
    widths = [0.25, 0.5, 0.75, 1.0]
    trained = evaluate_checkpoint(ckpt, widths)
    torch.manual_seed(0)
    random_net = get_model(ckpt.arch, **ckpt.arch_kwargs)
    rand = evaluate_checkpoint(Checkpoint.from_model(random_net, dataset=ckpt.dataset), widths)
    rows = [{"width": a["width"], "knn_trained": a["knn"], "knn_random": b["knn"]} for a, b in zip(trained, rand)]
    # CPU seconds tell the cost on a busy machine: wall ~ cpu / threads when the cores are free.
    return {"wall_s": wall, "cpu_s": child_cpu, "child_peak_rss_mb": child_rss,
            "load_avg_1m": os.getloadavg()[0], "knn": rows}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=get_recipe("digits").batch_size, help="default: the digits recipe's")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-default-run", action="store_true", help="only measure (a)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    result = {"overhead": iteration_overhead(args.batch, args.repeats, args.warmup, torch.device(args.device))}
    o = result["overhead"]
    console.print(f"iteration {o['iteration_s'] * 1e3:.1f} ms / sum of passes {o['sum_passes_s'] * 1e3:.1f} ms "
                  f"= ratio [bold]{o['ratio']:.3f}[/] (goal <= 1.15); peak RSS {o['peak_rss_mb']:.0f} MB; "
                  f"passes: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in o["passes_s"].items()))
    if not args.skip_default_run:
        with tempfile.TemporaryDirectory() as tmp:
            result["default_run"] = d = default_run(Path(tmp) / "run")
        table = Table(title=f"`us3l train` (default): {d['wall_s']:.0f} s wall, {d['cpu_s']:.0f} s CPU, "
                            f"peak RSS {d['child_peak_rss_mb']:.0f} MB, load {d['load_avg_1m']:.1f}")
        for col in ("width", "kNN trained", "kNN random init"):
            table.add_column(col, justify="right")
        for r in d["knn"]:
            table.add_row(f"{r['width']:g}", f"{r['knn_trained']:.3f}", f"{r['knn_random']:.3f}")
        console.print(table)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
