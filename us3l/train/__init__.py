"""US3L self-supervised training of a universally slimmable checkpoint, and per-width evaluation.

Public API::

    from us3l.train import TrainConfig, train, get_recipe, list_recipes, evaluate_checkpoint
    ckpt_path = train(get_recipe("digits").replace(epochs=2, out_dir="runs/demo"))

Names are re-exported lazily so ``import trainer`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
