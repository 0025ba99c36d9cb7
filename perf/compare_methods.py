"""Equal-budget comparison on digits (run by hand: ``python perf/compare_methods.py``).

For each seed, with the digits recipe's epochs, batch size and learning rate:

- ``us3l``: one universally slimmable network (US3L);
- ``naive``: one network, US-Net + online-vs-online SimCLR at every sampled width;
- ``individual``: one network per width (0.25 / 0.5 / 0.75 / 1.0), each trained alone at that
  width with the same SSL objective and the same number of epochs ("individually trained").

Every checkpoint is evaluated by kNN after BN recalibration at each width
(:func:`us3l.trainer.evaluate.evaluate_checkpoint`). Prints a rich table (mean ± std over seeds) and
writes all numbers, plus the collapse detector's last verdicts, as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

WIDTHS = [0.25, 0.5, 0.75, 1.0]


def _collapse_flags(out_dir: Path) -> dict:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    if not lines:
        return {}
    records = [json.loads(x) for x in lines]
    ever = sorted({c["width"] for r in records for c in r.get("collapse", []) if c["collapsed"]})
    last = {c["width"]: round(c["std_ratio"], 4) for c in records[-1].get("collapse", [])}
    return {"ever_collapsed_widths": ever, "final_std_ratio": last}


def run_one(method: str, seed: int, root: Path, overrides: dict, width: float | None = None) -> dict:
    """Train one configuration and evaluate it; returns accuracies per width and timings."""
    from us3l.trainer.evaluate import evaluate_checkpoint
    from us3l.trainer.loop import run_training
    from us3l.trainer.recipes import get_recipe
    from us3l.core.checkpoint import load_checkpoint

    name = f"{method}_s{seed}" + (f"_w{width:g}" if width is not None else "")
    cfg = get_recipe("digits").replace(method=method, seed=seed, out_dir=str(root / name), single_width=width,
                                       tensorboard=False, **overrides)
    t0 = time.perf_counter()
    path = run_training(cfg)
    train_s = time.perf_counter() - t0
    rows = evaluate_checkpoint(load_checkpoint(path), [width] if width is not None else WIDTHS)
    return {"method": method, "seed": seed, "width": width, "train_s": train_s,
            "knn": {r["width"]: r["knn"] for r in rows}, **_collapse_flags(root / name)}


def summarise(runs: list[dict]) -> dict[str, dict[float, list[float]]]:
    table: dict[str, dict[float, list[float]]] = {"us3l": {}, "naive": {}, "individual": {}}
    for r in runs:
        key = "individual" if r["method"] == "single" else r["method"]
        for w, acc in r["knn"].items():
            table[key].setdefault(float(w), []).append(acc)
    return table


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (same for every method)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (0: default)")
    p.add_argument("--methods", default="us3l,naive,individual")
    p.add_argument("--json", type=Path, default=Path("compare_methods.json"))
    p.add_argument("--merge", type=Path, nargs="+", help="only print the table of earlier --json outputs")
    args = p.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    overrides = {"threads": args.threads}
    if args.epochs:
        overrides["epochs"] = args.epochs
    methods = args.methods.split(",")
    runs: list[dict] = []
    console = Console()
    if args.merge:
        for path in args.merge:
            runs += json.loads(path.read_text())["runs"]
        args.seeds = ",".join(sorted({str(r["seed"]) for r in runs}))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in ([] if args.merge else (int(s) for s in args.seeds.split(","))):
            for method in methods:
                jobs = [(method if method != "individual" else "single", w)
                        for w in (WIDTHS if method == "individual" else [None])]
                for m, w in jobs:
                    runs.append(run_one(m, seed, Path(tmp), overrides, w))
                    console.log(f"{m} seed {seed}" + (f" width {w:g}" if w else "") +
                                f": {runs[-1]['knn']} ({runs[-1]['train_s']:.0f}s)")
                    args.json.write_text(json.dumps({"runs": runs}, indent=2))
    table_data = summarise(runs)
    table = Table(title=f"digits kNN accuracy, equal budget, seeds {args.seeds}")
    table.add_column("method")
    for w in WIDTHS:
        table.add_column(f"w={w:g}", justify="right")
    for key, per_width in table_data.items():
        if not per_width:
            continue
        cells = []
        for w in WIDTHS:
            vals = per_width.get(w, [])
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(vals):.1f} ± {100 * sd:.1f}" if vals else "-")
        table.add_row(key, *cells)
    console.print(table)
    summary = {k: {str(w): statistics.mean(v) for w, v in d.items()} for k, d in table_data.items()}
    args.json.write_text(json.dumps({"runs": runs, "mean_knn": summary}, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
