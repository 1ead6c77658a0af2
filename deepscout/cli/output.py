"""One way for every command to report a user error: a red line on stderr and a non-zero exit."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

stderr = Console(stderr=True)


def fail(message: str, code: int = 2) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
