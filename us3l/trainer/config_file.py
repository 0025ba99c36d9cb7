"""Training configuration files: TOML in, TOML out, every :class:`~us3l.trainer.config.TrainConfig` field.

A file holds any subset of the fields at the top level (``arch_kwargs`` as an inline table) and,
optionally, ``recipe = "name"``: the shipped preset its values override. ``us3l train
--print-config`` writes the resolved configuration with every field, so that reading it back gives
the same run; unset optional fields are written as comments. The shipped recipes are such files
too (``us3l/trainer/recipe_files/*.toml``, with a ``description``).

Resolution (:func:`us3l.trainer.recipes.resolve`, above this module and the recipes): defaults →
recipe → ``--config`` file → ``--set key=value`` → explicit flags.

Unknown keys and wrong types raise :class:`~us3l.core.errors.ConfigError`: one line naming the key,
the expected type and, for a typo, the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from us3l.core.errors import ConfigError

from .config import TrainConfig

CONFIG_NAME = "config.toml"
RECIPE_KEY = "recipe"
DESCRIPTION_KEY = "description"
RECIPE_DIR = Path(__file__).with_name("recipe_files")


def _hints() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _type_text(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(_type_text(a) for a in inner) + " (or unset)"
    if origin is tuple:
        return "a list of strings"
    if origin is dict or hint is dict:
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` checked against the field's type (ints accepted for floats, lists for tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(key, value, inner[0], source) if len(inner) == 1 else value
    ok = False
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    elif origin is dict or hint is dict:
        ok = isinstance(value, dict)
    if not ok:
        raise ConfigError(f"{source}: '{key}' must be {_type_text(hint)}, got {value!r} ({type(value).__name__})")
    return value


def check_fields(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Keys known and values of the right type (one :class:`ConfigError` line otherwise)."""
    hints, names = _hints(), field_names()
    out = {}
    for key, value in data.items():
        if key not in hints:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            raise ConfigError(f"{source}: unknown key '{key}'{hint}; valid keys: {', '.join(names)}")
        out[key] = _coerce(key, value, hints[key], source)
    return out


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML file as a dict (one line on a missing file or a syntax error)."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None


def load_file(path: str | os.PathLike) -> tuple[str | None, dict[str, Any]]:
    """``(recipe or None, checked fields)`` of a config file."""
    data = read_toml(path)
    recipe = data.pop(RECIPE_KEY, None)
    data.pop(DESCRIPTION_KEY, None)
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"{path}: 'recipe' must be a string (a name from us3l train --list-recipes)")
    return recipe, check_fields(data, str(path))


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items: the value is read as TOML (``2``, ``0.5``, ``true``, ``["a"]``), else as a
    plain string; ``none`` unsets an optional field."""
    raw: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not key=value (for example --set lr=0.05)")
        if text.lower() in ("none", "null"):
            raw[key] = None
            continue
        try:
            raw[key] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            raw[key] = text
    hints = _hints()
    for key, value in raw.items():
        if value is None and key in hints and type(None) not in typing.get_args(hints[key]):
            raise ConfigError(f"--set: '{key}' cannot be unset; it must be {_type_text(hints[key])}")
    return check_fields(raw, "--set")


# --------------------------------------------------------------------------- writing

def to_toml(cfg: TrainConfig, header: str = "") -> str:
    """Every field of ``cfg`` as TOML, written by ``tomli_w`` (``None`` fields as comments, tables such
    as ``arch_kwargs`` last); :func:`load_file` reads every value back exactly, strings with control
    characters included.

    Raises:
        ConfigError: a value TOML cannot hold.
    """
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    tables: dict[str, Any] = {}
    for name, value in cfg.to_dict().items():
        if value is None:
            lines.append(f"# {name} = (unset)")
        elif isinstance(value, dict):
            tables[name] = value
        else:
            lines.append(_dump({name: list(value) if isinstance(value, tuple) else value}).rstrip("\n"))
    text = "\n".join(lines) + "\n"
    return text + ("\n" + _dump(tables) if tables else "")


def _dump(data: dict[str, Any]) -> str:
    import tomli_w

    try:
        return tomli_w.dumps(data)
    except TypeError as exc:
        raise ConfigError(f"cannot write the configuration as TOML ({exc})") from None


def save_resolved(cfg: TrainConfig, out_dir: str | os.PathLike) -> Path:
    """Write ``cfg`` as ``out_dir/config.toml`` (atomic), beside the checkpoint."""
    from us3l.core.files import atomic_write_text

    return atomic_write_text(Path(out_dir) / CONFIG_NAME,
                             to_toml(cfg, "resolved configuration of this run (us3l train --config reads it)"))
