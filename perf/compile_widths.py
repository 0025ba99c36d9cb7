"""``torch.compile`` with changing widths: how many recompiles, is the output right, what does it cost (by hand).

``python perf/compile_widths.py [--arch us_resnet_mini] [--iterations 10] [--backend eager] [--json FILE]``

Compiles the backbone once, then runs forward + backward at the widths the trainer would draw
(sandwich rule, 3 per iteration: 1.0, the minimum and one uniform draw, schedule stage 4) inside
``use_width``, and counts the graphs Dynamo compiled and the recompiles it reported. Every
output is compared with the eager network at the same width (a stale graph would be wrong,
not slow). ``--backend eager`` measures Dynamo's guards and tracing only (no code generation);
``inductor`` adds code generation (needs a C++ compiler on CPU). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from us3l.core.context import use_width
from us3l.core.models import get_model
from us3l.trainer.sampling import sample_widths


def measure(arch: str, iterations: int, backend: str, batch: int, size: int) -> dict:
    import torch._dynamo as dynamo
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = get_model(arch, num_classes=0, input_size=size).train()
    compiled = torch.compile(model, backend=backend)
    rng = random.Random(0)
    x = torch.randn(batch, 3, size, size)
    widths, first_call, worst, times, graphs = [], {}, 0.0, [], []
    for _ in range(iterations):
        for w in sample_widths(rng, 3, 0.25, 1.0):
            widths.append(w)
            t0 = time.perf_counter()
            with use_width(model, w):
                out = compiled(x)
                out.float().pow(2).mean().backward()
                ref = model(x)
            times.append(time.perf_counter() - t0)
            worst = max(worst, float((out - ref).detach().abs().max()))
            first_call.setdefault(round(w, 6), times[-1])
            graphs.append(int(counters["stats"].get("unique_graphs", 0)))
    stats = dict(counters["stats"])
    new_graph_at = [i for i in range(len(graphs)) if graphs[i] != (graphs[i - 1] if i else 0)]
    distinct = len({round(w, 6) for w in widths})
    return {"arch": arch, "backend": backend, "batch": batch, "size": size, "width_calls": len(widths),
            "distinct_widths": distinct, "unique_graphs": stats.get("unique_graphs"),
            "ops_captured": stats.get("calls_captured"), "calls_that_compiled": new_graph_at,
            "steady_call_s_median": sorted(times[i] for i in range(len(times)) if i not in new_graph_at)[
                (len(times) - len(new_graph_at)) // 2],
            "cache_size_limit": getattr(dynamo.config, "cache_size_limit", None),
            "recompile_limit": getattr(dynamo.config, "recompile_limit", None),
            "max_abs_diff_vs_eager": worst, "first_call_s_median": sorted(first_call.values())[len(first_call) // 2],
            "total_s": sum(times)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="us_resnet_mini")
    p.add_argument("--iterations", type=int, default=10, help="training iterations of 3 widths (default 10)")
    p.add_argument("--backend", default="eager", help="eager (Dynamo only), aot_eager or inductor")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    result = measure(args.arch, args.iterations, args.backend, args.batch, args.size)
    text = json.dumps(result)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
