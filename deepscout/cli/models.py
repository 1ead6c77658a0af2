"""``deepscout models ...`` and ``deepscout setup``: owned by the model-runtime work (issue 2)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Fetch and inspect models.", no_args_is_help=True)


def setup() -> None:
    """Fetch the default model and the demo corpus from the package registry."""
    raise NotImplementedError
