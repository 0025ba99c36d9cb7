"""`us3l eval` (placeholder until its issue lands)."""

from __future__ import annotations

import typer

from ..errors import US3LError
from .common import user_errors


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def command() -> None:
        """Not implemented yet."""
        raise US3LError("'us3l eval' is not implemented yet")
