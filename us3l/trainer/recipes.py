"""Named training presets: the paper's shipped configurations (docs/method.md §12, §13) and the digits default.

Each preset is a TOML file in ``us3l/trainer/recipe_files/`` (a ``description`` line and the
:class:`~us3l.trainer.config.TrainConfig` fields that differ from the defaults; the format of
``us3l train --config``, see :mod:`us3l.trainer.config_file`). ``get_recipe(name)`` returns the
resolved ``TrainConfig``; CLI flags then override fields with ``cfg.replace(...)``.

Batch sizes are per process (the reference's "batch/GPU"); launch with
``torchrun --nproc_per_node=<GPUs>`` to reproduce the global batch. The exception is the ViT
recipe, whose 512 is the global batch (``global_batch=True``), as in MoCo v3. The SimCLR
configurations keep the last, smaller batch of each epoch (``drop_last = false``, docs/method.md §12).

:func:`resolve` gives a run its configuration: defaults → recipe → ``--config`` file → ``--set
key=value`` → explicit flags. With ``--resume`` the base is the run's saved ``config.toml`` (written
beside the checkpoint), so the original options need not be repeated.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError, unknown_name

from .config import TrainConfig
from .config_file import CONFIG_NAME, DESCRIPTION_KEY, RECIPE_DIR, check_fields, field_names, load_file, parse_set, read_toml


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


# --------------------------------------------------------------------------- resolving

def resolve(recipe: str | None = None, config: str | os.PathLike | None = None, sets: list[str] | None = None,
            overrides: dict[str, Any] | None = None, resume_dir: str | os.PathLike | None = None) -> TrainConfig:
    """The run's configuration: defaults → recipe → config file → ``--set`` → explicit flags.

    Args:
        recipe: preset name (``--recipe``); None: the file's ``recipe`` key, else ``digits``.
        config: a TOML file (``--config``).
        sets: ``key=value`` items (``--set``).
        overrides: fields given as flags (``None`` values ignored).
        resume_dir: with ``--resume``, the run folder whose saved configuration is the base
            (``config.toml``, else the checkpoint's record) when no recipe or file is given.

    Raises:
        ConfigError / UnknownNameError: unknown keys, wrong types, invalid values or recipes.
    """
    fields: dict[str, Any] = {}
    file_recipe = None
    if config is not None:
        file_recipe, fields = load_file(config)
        if recipe is not None and file_recipe is not None and recipe != file_recipe:
            raise ConfigError(f"--recipe {recipe} contradicts recipe = \"{file_recipe}\" in {config}; give one")
    base_name = recipe or file_recipe
    if base_name is not None:
        base = get_recipe(base_name)
    elif resume_dir is not None and config is None and _saved(resume_dir) is not None:
        base = _saved(resume_dir)  # type: ignore[assignment]
    else:
        base = get_recipe("digits")
    merged = {**base.to_dict(), **fields, **parse_set(list(sets or []))}
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(merged)


def _saved(run_dir: str | os.PathLike) -> TrainConfig | None:
    """The configuration a run folder recorded: ``config.toml``, else the checkpoint's ``train_config``."""
    folder = Path(run_dir)
    path = folder / CONFIG_NAME
    if path.is_file():
        _, fields = load_file(path)
        return TrainConfig.from_dict({**TrainConfig().to_dict(), **fields})
    ckpt = folder / "checkpoint.pt"
    if ckpt.is_file():
        from us3l.core.checkpoint import load_checkpoint

        saved = load_checkpoint(ckpt).train_config
        if saved:
            known = set(field_names())
            return TrainConfig.from_dict({k: v for k, v in dict(saved).items() if k in known})
    return None
