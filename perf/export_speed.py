"""Export speed and slicing overhead (run by hand; not part of the test suite).

(a) A 16-width ladder (``0.25:1.0:0.05``) of ``us_resnet18_cifar`` exported to ONNX and verified
    (parity gate) into a fresh directory, then the identical command again (served from cache).
    Once with torch's dynamo exporter (the default, goal: cold <= 60 s on 2 cores) and once with
    the legacy TorchScript exporter (the explicit fallback), in the same run, with their ratio.
(b) ONNX Runtime latency of the exported width-``w`` artifact vs a hand-built static ResNet-18
    (plain ``nn.Conv2d``/``nn.BatchNorm2d`` written here, independently of the slimmable code)
    with the same channel counts and the same weights, exported by the same function with the
    same session options, measured in interleaved rounds: the ratio should be 1.00 +- 0.03.

Usage::

    python perf/export_speed.py --json export_speed.json [--width 0.5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from us3l.exporters import ExportConfig, run_export
from us3l.exporters.onnx_exporter import ort_session, simplify_onnx, torch_to_onnx_bytes

LADDER = "0.25:1.0:0.05"


class Block(nn.Module):
    """Plain ResNet basic block with explicit channel counts."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + idt)


class HandResNet18Cifar(nn.Module):
    """Static CIFAR ResNet-18 built from a channel table (stem + 8 blocks), pooled features out."""

    def __init__(self, ch: dict[str, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, ch["conv1"], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch["conv1"])
        cin = ch["conv1"]
        for s in range(1, 5):
            blocks = []
            for b in range(2):
                stride = 2 if (s > 1 and b == 0) else 1
                mid, out = ch[f"layer{s}.{b}.conv1"], ch[f"layer{s}.{b}.conv2"]
                blocks.append(Block(cin, mid, out, stride))
                cin = out
            setattr(self, f"layer{s}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def ladder(out_dir: Path, exporter: str = "dynamo") -> dict:
    cfg = ExportConfig(arch="us_resnet18_cifar", widths=LADDER, out_dir=str(out_dir), onnx_exporter=exporter)
    t = time.perf_counter()
    cold = run_export(cfg)
    t_cold = time.perf_counter() - t
    t = time.perf_counter()
    warm = run_export(cfg)
    t_cached = time.perf_counter() - t
    return {"widths": LADDER, "exporter": exporter, "artifacts": len(cold.artifacts), "cold_s": round(t_cold, 2),
            "cached_s": round(t_cached, 2), "cached_artifacts": warm.num_cached,
            "max_abs_err": max(a.parity["max_abs_err"] for a in cold.artifacts)}


def _time(sess, feed: dict, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, feed)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def latency(width: float, threads: int, rounds: int, iters: int, warmup: int) -> dict:
    from us3l.core.bn import calibrate_bn
    from us3l.core.models import get_model
    from us3l.core.slicing import slice_to_width

    torch.manual_seed(0)
    net = get_model("us_resnet18_cifar").eval()
    calibrate_bn(net, [torch.randn(32, 3, 32, 32)], width)
    static = slice_to_width(net.eval(), width)
    hand = HandResNet18Cifar(static.channels).eval()
    hand.load_state_dict({k: v for k, v in static.state_dict().items()}, strict=True)  # same weights
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hand(x), static(x), atol=1e-5), "hand-built network must equal the slice"
    sessions = {}
    import onnx

    for name, module in (("sliced", static), ("hand_built", hand)):
        model = simplify_onnx(onnx.load_from_string(torch_to_onnx_bytes(module, torch.zeros(2, 3, 32, 32), 17, True)))
        sessions[name] = ort_session(model.SerializeToString(), threads=threads)
    feed = {"input": x.numpy()}
    medians: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):  # interleaved rounds resist drift on a shared machine
        for name, sess in sessions.items():
            _time(sess, feed, warmup)
            medians[name].append(statistics.median(_time(sess, feed, iters)))
    med = {k: statistics.median(v) for k, v in medians.items()}
    ratios = [a / b for a, b in zip(medians["sliced"], medians["hand_built"])]
    return {"width": width, "threads": threads, "rounds": rounds, "iters": iters,
            "sliced_ms": round(med["sliced"], 4), "hand_built_ms": round(med["hand_built"], 4),
            "ratio": round(med["sliced"] / med["hand_built"], 4),
            "round_ratios": [round(r, 4) for r in ratios], "channels": static.channels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="export_speed.json", help="where to write the results")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads for (b)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--torch-threads", type=int, default=0, help="torch threads for (a); 0 = torch default")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    tmp = Path(tempfile.mkdtemp(prefix="us3l-export-speed-"))
    try:
        res_a = ladder(tmp / "ladder")
        res_legacy = ladder(tmp / "ladder-legacy", "torchscript")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res_b = latency(args.width, args.threads, args.rounds, args.iters, args.warmup)
    result = {"ladder": res_a, "ladder_legacy": res_legacy,
              "dynamo_over_legacy": round(res_a["cold_s"] / res_legacy["cold_s"], 3), "latency": res_b, "torch_threads": torch.get_num_threads(),
              "numpy": np.__version__, "torch": torch.__version__}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    from rich.console import Console
    from rich.table import Table

    table = Table(title="export speed (us_resnet18_cifar)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row(f"ladder {LADDER}: {res_a['artifacts']} artifacts, cold (dynamo)", f"{res_a['cold_s']:.1f} s")
    table.add_row("same ladder, legacy exporter, cold", f"{res_legacy['cold_s']:.1f} s")
    table.add_row("dynamo / legacy", f"{result['dynamo_over_legacy']:.2f}")
    table.add_row("same ladder again (cached)", f"{res_a['cached_s']:.2f} s")
    table.add_row("max parity error over the ladder", f"{res_a['max_abs_err']:.2e}")
    table.add_row(f"ORT p50 sliced w={args.width} ({args.threads} thr)", f"{res_b['sliced_ms']:.3f} ms")
    table.add_row("ORT p50 hand-built static, same shape", f"{res_b['hand_built_ms']:.3f} ms")
    table.add_row("ratio sliced / hand-built", f"{res_b['ratio']:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
