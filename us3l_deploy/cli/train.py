"""`us3l train` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from ..errors import US3LError
from .common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("train")
    @user_errors
    def command() -> None:
        """Not implemented yet."""
        raise US3LError("'us3l train' is not implemented yet")
