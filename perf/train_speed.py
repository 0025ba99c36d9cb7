"""Training speed and memory of US3L (run by hand: ``python perf/train_speed.py``).

(a) Overhead of one US3L iteration: the time of ``train_step`` over widths ``[1.0, 0.625, 0.25]``
    divided by the sum of its constituent passes timed alone (the teacher's no-grad forward at
    1.0 plus, per width, the online forward + loss + backward). Goal <= 1.05 at batch 32 on
    ``us_resnet18_cifar`` (the default). The iteration is the one the trainer runs on a
    non-logged step: GroupReg as a gradient term, its value not computed. Peak RSS via psutil.
(b) Before / after: the same iteration with the old GroupReg form (an autograd term in the loss,
    ``reg_mode="autograd"``) and the new one, interleaved in one run; ratio after / before, and
    each form's GroupReg cost timed alone (its share of the iteration). Single-process CPU: the
    old per-iteration width broadcast was a no-op without a process group and the GPU settings
    (cudnn.benchmark, DDP buckets) do not apply, so (b) isolates item 5.
(c) Wall time of ``us3l train`` with no arguments (a subprocess) and the kNN accuracy of its
    checkpoint per width against a randomly initialised network of the same architecture.

Warm-up iterations first, then the median of timed repetitions (``time.perf_counter``; on CUDA
the device is synchronised inside the timed region). ``perf/gpu_check.py`` reuses (a) and (b).
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

from us3l.trainer.group_reg import GroupRegularizer
from us3l.trainer.recipes import get_recipe
from us3l.trainer.ssl_model import build_ssl_model
from us3l.trainer.step import StepParts, build_losses, train_step

WIDTHS = [1.0, 0.625, 0.25]
RECIPE_OF = {"us_resnet18_cifar": "cifar100_r18_simclr", "us_resnet50_cifar": "cifar100_r50_simclr",
             "us_mobilenet_v2_cifar": "cifar100_mbv2_simclr", "us_resnet_mini": "digits"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_interleaved(fns: dict, repeats: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Median time of each function; one call of each per round, so load changes hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def build_parts(arch: str, device: torch.device, reg_mode: str, amp: bool = False, channels_last: bool = False,
                size: int = 32, heads: tuple[int, int, int] | None = None) -> tuple:
    """An SSL model + step parts as the recipe of ``arch`` trains it (seeded: identical per call)."""
    cfg = get_recipe(RECIPE_OF.get(arch, "cifar100_r18_simclr"))
    hid, out, pred = heads or (cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.pred_hidden_dim)
    torch.manual_seed(0)
    model = build_ssl_model(arch, {"input_size": size}, cfg.ssl, "us3l", hid, out, pred).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.trainable_parameters(), lr=1e-3, momentum=0.9)
    losses = build_losses("us3l", cfg.ssl, cfg.loss_temperature)
    amp = amp and device.type == "cuda"
    reg = GroupRegularizer(cfg.reg_lambda, total_epochs=cfg.epochs)
    parts = StepParts(model, model, opt, torch.amp.GradScaler(device.type, enabled=amp), losses, "us3l", reg,
                      False, amp, reg_mode=reg_mode, channels_last=channels_last)
    return model, parts, losses, cfg.epochs - 1


def iteration_overhead(batch: int, repeats: int, warmup: int, device: torch.device, arch: str = "us_resnet18_cifar",
                       amp: bool = False, channels_last: bool = False, size: int = 32,
                       heads: tuple[int, int, int] | None = None) -> dict:
    """(a) iteration / sum of its passes, and (b) the old GroupReg form against the new, in one run."""
    model, parts, losses, epoch = build_parts(arch, device, "grad", amp, channels_last, size, heads)
    _, old_parts, _, _ = build_parts(arch, device, "autograd", amp, channels_last, size, heads)
    reg = parts.regularizer
    x1, x2 = (torch.randn(batch, 3, size, size, device=device) for _ in range(2))
    if channels_last:
        x1, x2 = (x.contiguous(memory_format=torch.channels_last) for x in (x1, x2))
    proc = psutil.Process()
    peak = [proc.memory_info().rss]
    amp = parts.amp

    def full() -> None:
        train_step(parts, x1, x2, WIDTHS, epoch=epoch, ema_momentum=0.99, reg_value=False)
        peak.append(proc.memory_info().rss)

    def old() -> None:
        train_step(old_parts, x1, x2, WIDTHS, epoch=epoch, ema_momentum=0.99)

    with torch.autocast(device.type, enabled=amp):
        k = model.teacher_forward(x1, x2)

    def teacher() -> None:
        with torch.autocast(device.type, enabled=amp):
            model.teacher_forward(x1, x2)

    def online(width: float, head: str, loss) -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            q1, q2, _ = model(x1, x2, width, head)
        loss((q1.float(), q2.float()), (k[0].float(), k[1].float())).backward()
        peak.append(proc.memory_info().rss)

    def reg_grad() -> None:  # the new form's work in one iteration: one add_grad_ per width
        for w in WIDTHS:
            reg.add_grad_(model, w, epoch)

    def reg_autograd() -> None:  # the old form's: the term's graph, forward and backward, per width
        for w in WIDTHS:
            reg(model, w, epoch).backward()

    fns = {"iteration": full, "iteration_old_groupreg": old, "teacher_forward": teacher}
    for i, w in enumerate(WIDTHS):
        head = "none" if i == 0 else "aux"
        if i == 0 and model.predictor is not None:
            head = "predictor"
        fns[f"fwd_bwd_{w}"] = lambda w=w, h=head, lf=(losses.base if i == 0 else losses.distill): online(w, h, lf)
    fns["groupreg_grad"], fns["groupreg_autograd"] = reg_grad, reg_autograd
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts_t = _timed_interleaved(fns, repeats, warmup, device)
    t_full, t_old = parts_t.pop("iteration"), parts_t.pop("iteration_old_groupreg")
    t_reg, t_reg_old = parts_t.pop("groupreg_grad"), parts_t.pop("groupreg_autograd")
    total = sum(parts_t.values())
    result = {"arch": arch, "batch": batch, "widths": WIDTHS, "amp": amp, "channels_last": channels_last,
              "iteration_s": t_full, "passes_s": parts_t, "sum_passes_s": total, "ratio": t_full / total,
              "iteration_old_groupreg_s": t_old, "ratio_old_groupreg": t_old / total,
              "after_over_before": t_full / t_old,
              "groupreg_grad_s": t_reg, "groupreg_share": t_reg / t_full,
              "groupreg_autograd_s": t_reg_old, "groupreg_autograd_share": t_reg_old / t_old,
              "images_per_s": batch / t_full, "peak_rss_mb": max(peak) / 2**20,
              "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        result["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return result


def default_run(out: Path) -> dict:
    """Time ``us3l train`` (no arguments but --out) and compare kNN per width with random init."""
    from us3l.trainer.evaluate import evaluate_checkpoint
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
    p.add_argument("--batch", type=int, default=32, help="images per view (default 32)")
    p.add_argument("--arch", default="us_resnet18_cifar", help="backbone (heads of its CIFAR recipe)")
    p.add_argument("--size", type=int, default=32, help="input side in pixels (default 32)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-default-run", action="store_true", help="only measure (a)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    console = Console()
    result = {"overhead": iteration_overhead(args.batch, args.repeats, args.warmup, torch.device(args.device),
                                             args.arch, size=args.size)}
    o = result["overhead"]
    console.print(f"{o['arch']} batch {o['batch']}: iteration {o['iteration_s'] * 1e3:.1f} ms / sum of passes "
                  f"{o['sum_passes_s'] * 1e3:.1f} ms = ratio [bold]{o['ratio']:.3f}[/] (goal <= 1.05); "
                  f"peak RSS {o['peak_rss_mb']:.0f} MB; passes: "
                  + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in o["passes_s"].items()))
    console.print(f"old GroupReg form: iteration {o['iteration_old_groupreg_s'] * 1e3:.1f} ms (ratio "
                  f"{o['ratio_old_groupreg']:.3f}); after / before = [bold]{o['after_over_before']:.3f}[/]; "
                  f"GroupReg alone: gradient form {o['groupreg_grad_s'] * 1e3:.1f} ms "
                  f"({o['groupreg_share']:.1%}), autograd form {o['groupreg_autograd_s'] * 1e3:.1f} ms "
                  f"({o['groupreg_autograd_share']:.1%})")
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
