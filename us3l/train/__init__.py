"""US3L self-supervised training of a universally slimmable checkpoint, and per-width evaluation.

Public API::

    from us3l.train import TrainConfig, train, get_recipe, list_recipes, evaluate_checkpoint
    ckpt_path = train(get_recipe("digits").replace(epochs=2, out_dir="runs/demo"))

Names are re-exported lazily so ``import trainer`` stays cheap.
"""

from __future__ import annotations

from us3l.core.lazy import lazy_getattr

_EXPORTS = {
    "TrainConfig": "config",
    "train": "loop",
    "Trainer": "loop",
    "get_recipe": "recipes",
    "list_recipes": "recipes",
    "evaluate_checkpoint": "evaluate",
    "run_eval": "evaluate",
    "EvalConfig": "evaluate",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
