"""`us3l import` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from ..errors import US3LError
from .common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("import")
    @user_errors
    def command() -> None:
        """Not implemented yet."""
        raise US3LError("'us3l import' is not implemented yet")
