"""Every ``us3l`` command by its full name, for the tests that walk the whole CLI."""

from __future__ import annotations


def flatten(group, prefix: str = "") -> dict:
    """A click group's commands by full name: a sub-app's commands as ``"fleet plan"``, ``"fleet check"``."""
    out = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            out.update(flatten(cmd, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = cmd
    return out


def all_commands() -> dict:
    """``{"train": <click command>, ..., "fleet plan": ...}`` of the ``us3l`` app."""
    import typer.main

    from us3l.cli.main import app

    return flatten(typer.main.get_command(app))
