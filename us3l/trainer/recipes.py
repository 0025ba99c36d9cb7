"""Named training presets: the paper's shipped configurations (docs/method.md §12, §13) and the digits default.

Each preset is a TOML file in ``us3l/trainer/recipe_files/`` (a ``description`` line and the
:class:`~us3l.trainer.config.TrainConfig` fields that differ from the defaults; the format of
``us3l train --config``, see :mod:`us3l.trainer.config_file`). ``get_recipe(name)`` returns the
resolved ``TrainConfig``; CLI flags then override fields with ``cfg.replace(...)``.

Batch sizes are per process (the reference's "batch/GPU"); launch with
``torchrun --nproc_per_node=<GPUs>`` to reproduce the global batch. The exception is the ViT
recipe, whose 512 is the global batch (``global_batch=True``), as in MoCo v3. The SimCLR
configurations keep the last, smaller batch of each epoch (``drop_last = false``, docs/method.md §12).
"""

from __future__ import annotations

from us3l.core.errors import unknown_name

from .config import TrainConfig
from .config_file import DESCRIPTION_KEY, RECIPE_DIR, check_fields, read_toml


def list_recipes() -> list[str]:
    """Sorted recipe names (the TOML files shipped in the package)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def _read(name: str) -> dict:
    if name not in list_recipes():
        raise unknown_name("recipe", name, list_recipes())
    return read_toml(RECIPE_DIR / f"{name}.toml")


def get_recipe(name: str) -> TrainConfig:
    """The preset ``name``.

    Raises:
        UnknownNameError: unknown recipe (the message lists the valid ones).

    Examples:
        >>> get_recipe("cifar100_r18_simclr").lr
        0.5
    """
    data = _read(name)
    data.pop(DESCRIPTION_KEY, None)
    return TrainConfig.from_dict(check_fields(data, f"recipe {name}"))


def recipe_doc(name: str) -> str:
    """The recipe's one-line description (for listings)."""
    return str(_read(name).get(DESCRIPTION_KEY, "")).strip()
