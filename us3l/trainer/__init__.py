"""US3L self-supervised training of a universally slimmable checkpoint, and per-width evaluation.

Public API::

    from us3l.trainer import TrainConfig, run_training, get_recipe, list_recipes, evaluate_checkpoint
    ckpt_path = run_training(get_recipe("digits").replace(epochs=2, out_dir="runs/demo"))

Names are re-exported lazily so ``import us3l.trainer`` stays cheap.
"""

from __future__ import annotations

from us3l.core.lazy import lazy_getattr

_EXPORTS = {
    "TrainConfig": "config",
    "run_training": "loop",
    "Trainer": "loop",
    "get_recipe": "recipes",
    "list_recipes": "recipes",
    "evaluate_checkpoint": "evaluate",
    "run_eval": "evaluate",
    "EvalConfig": "evaluate",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
