"""``deepscout ask``: owned by the agent slice (issue 2)."""

from __future__ import annotations

import typer


def ask(question: str = typer.Argument(..., help="The question to research.")) -> None:
    """Research QUESTION on the local corpus and print a cited answer."""
    raise NotImplementedError
