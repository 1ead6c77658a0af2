"""``deepscout corpus ...``: owned by the memory/corpus work (issue 2)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Manage the local corpus.", no_args_is_help=True)
