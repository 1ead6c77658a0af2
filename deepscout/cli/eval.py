"""``deepscout eval ...``: owned by the eval harness (issue 6)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Agentic search vs RAG: run evaluations and write reports.", no_args_is_help=True)
