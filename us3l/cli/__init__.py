"""The ``us3l`` command line: one thin typer module per command."""
