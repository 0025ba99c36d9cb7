"""Why slimmable fine-tuning trails networks trained alone (run by hand: ``python perf/finetune_diagnosis.py``).

``perf/task_models.py`` compares (c) slimmable fine-tuning from the SSL checkpoint with (d) one
network per width trained from random weights. When (c) trails (d), two things differ at once:
the start (SSL weights or random) and the training (four widths sharing weights, or one). Each
``--kind`` changes one of them, with the same recipe and seed as those runs:

- ``ssl-alone``: the SSL weights, trained at ``--width`` alone (start of (c), training of (d));
- ``slim-scratch``: random weights, slimmable training over the whole range (start of (d),
  training of (c));
- ``slim-ssl``: (c) itself, e.g. with more ``--epochs`` to test whether it is underfitting.

Prints top-1 per width and the per-epoch training losses (max width, sub-widths); ``--json FILE``
writes them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

KINDS = ("ssl-alone", "slim-scratch", "slim-ssl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="the SSL checkpoint of the task_models.py run")
    ap.add_argument("--kind", choices=KINDS, required=True)
    ap.add_argument("--recipe", default="fashion_mnist", help="fine-tuning recipe (as task_models.py --recipe)")
    ap.add_argument("--width", type=float, default=1.0, help="ssl-alone: the one width trained")
    ap.add_argument("--epochs", type=int, help="default: the recipe's")
    ap.add_argument("--seed", type=int, default=0, help="task_models.py's first seed is 0")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--max-steps-per-epoch", type=int, help="smoke runs")
    ap.add_argument("--out", default="perf-finetune-diagnosis", help="output folder (task checkpoint)")
    ap.add_argument("--json", help="write the numbers to this file")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from us3l.core.errors import US3LError
    from us3l.trainer.finetune import FinetuneConfig, get_finetune_recipe, run_finetune

    try:
        cfg = FinetuneConfig(checkpoint=args.checkpoint, out_dir=str(Path(args.out) / args.kind), seed=args.seed,
                             **get_finetune_recipe(args.recipe))
        cfg = cfg.replace(epochs=args.epochs, max_steps_per_epoch=args.max_steps_per_epoch)
        if args.kind == "ssl-alone":
            cfg = cfg.replace(train_width=args.width)
        elif args.kind == "slim-scratch":
            cfg = cfg.replace(init="scratch")
        t0 = time.perf_counter()
        res = run_finetune(cfg)
    except US3LError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    top1 = {str(r["width"]): r["top1"] for r in res.rows}
    print(f"{args.kind}, {cfg.epochs} epochs, seed {args.seed}: top-1 "
          + ", ".join(f"{w} {100 * a:.1f}" for w, a in top1.items()) + f" ({seconds:.0f}s)")
    for h in res.history:
        print(f"  epoch {h['epoch']:>3}: loss max width {h['loss_max']:.3f}, sub-widths {h['loss_sub']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"kind": args.kind, "recipe": args.recipe, "epochs": cfg.epochs,
                                               "seed": args.seed, "width": args.width if args.kind == "ssl-alone" else None,
                                               "top1": top1, "history": res.history, "seconds": round(seconds, 1),
                                               "checkpoint": str(res.checkpoint)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
