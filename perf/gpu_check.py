"""GPU check of the trainer and the torch runner (run by hand on one CUDA GPU, from the repository root:
``python perf/gpu_check.py``).

Prints one JSON object (and writes it with ``--json FILE``):

- ``iteration``: one ``us_resnet18_cifar`` US3L iteration (SimCLR-momentum heads of the R18 recipe,
  widths 1.0 / 0.625 / 0.25, batch 256 per view, AMP, synthetic data, ``cudnn.benchmark`` on)
  from :func:`perf.train_speed.iteration_overhead`: ``images_per_s``, ``ratio`` (iteration / sum
  of its passes timed alone; goal <= 1.10 on a GPU), ``groupreg_share`` (the gradient-form
  GroupReg's time / the iteration), ``peak_gpu_memory_mb`` and the old GroupReg form alongside;
- ``torch_runner``: the ``torch`` bench runner's median latency (ms, batch 1, fp32) per width on
  the same device.

Designed to finish in well under 8 minutes on one GPU (a few seconds of timing per figure; the
budget is checked and reported). ``--tiny --device cpu`` runs the same code on a small network
in seconds (the test suite does this); figures from that mode mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scripts, however this one is started
from train_speed import iteration_overhead  # noqa: E402

BUDGET_S = 8 * 60


def runner_latency(arch: str, widths: list[float], device: str, size: int, duration_s: float) -> dict[str, float]:
    """Median latency (ms, batch 1) of the ``torch`` runner per width on ``device``."""
    from us3l.benchmarks.artifacts import BenchArtifact, ModelSource
    from us3l.benchmarks.runners import RunnerOptions, TimingConfig, get_runner

    source = ModelSource(arch=arch)
    timing = TimingConfig(warmup_ms=200.0 * duration_s, duration_s=duration_s, rounds=1, rewarm_ms=0.0)
    out: dict[str, float] = {}
    for w in widths:
        art = BenchArtifact(width=w, path=None, sha256=f"in-process-{arch}-{w}", input_shape=(1, 3, size, size),
                            build_module=lambda w=w: source.build_static(w))
        with get_runner("torch")(art, RunnerOptions(device=device)) as runner:
            out[f"{w:g}"] = statistics.median(runner.measure(1, timing))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only with --tiny)")
    p.add_argument("--batch", type=int, default=256, help="images per view (default 256)")
    p.add_argument("--repeats", type=int, default=15, help="timed iterations per figure (default 15)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (default 3)")
    p.add_argument("--channels-last", action="store_true", help="also set the NHWC memory format")
    p.add_argument("--no-amp", action="store_true", help="time in float32 instead of AMP")
    p.add_argument("--tiny", action="store_true", help="us_resnet_mini at 16 px, batch 8, 2 repeats (CPU smoke run)")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run on a GPU machine, or use --tiny --device cpu for a smoke run")
    if device.type != "cuda" and not args.tiny:
        raise SystemExit("the GPU check measures a CUDA device; on CPU only --tiny is meaningful")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer sets it
    else:
        torch.set_num_threads(1)  # a shared CPU: spinning OpenMP threads would dominate tiny ops
    t0 = time.perf_counter()
    if args.tiny:
        arch, size, batch, repeats, warmup, heads, runner_s = "us_resnet_mini", 16, 8, 2, 1, (32, 16, 32), 0.05
    else:
        arch, size, batch, repeats, warmup, heads, runner_s = ("us_resnet18_cifar", 32, args.batch, args.repeats,
                                                               args.warmup, None, 1.0)
    it = iteration_overhead(batch, repeats, warmup, device, arch, amp=not args.no_amp,
                            channels_last=args.channels_last, size=size, heads=heads)
    t_iter = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.empty_cache()
    lat = runner_latency(arch, [0.25, 0.5, 0.75, 1.0], device.type, size, runner_s)
    wall = time.perf_counter() - t0
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "tiny": bool(args.tiny),
        "iteration": {k: it[k] for k in ("arch", "batch", "amp", "channels_last", "images_per_s", "iteration_s",
                                          "sum_passes_s", "ratio", "groupreg_grad_s", "groupreg_share",
                                          "iteration_old_groupreg_s", "ratio_old_groupreg", "after_over_before",
                                          "groupreg_autograd_share", "passes_s")},
        "ratio_goal": 1.10,
        "peak_gpu_memory_mb": it.get("peak_gpu_memory_mb"),
        "torch_runner_ms_batch1": lat,
        "seconds": {"iteration_figures": t_iter, "total": wall, "budget": BUDGET_S},
    }
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if wall > BUDGET_S:
        print(f"warning: took {wall:.0f} s, over the {BUDGET_S} s budget; lower --repeats", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
