"""One way for every command to report a user error, and to show text it does not control.

Rich reads ``[...]`` in printed strings as markup: a query, a path, a title or an error message holding
``[/x]`` would crash the command (``MarkupError``) and ``[red]…[/red]`` would be silently eaten. So error
messages and every untrusted value are printed as plain :class:`~rich.text.Text` (:func:`plain`), never
parsed as markup.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

stderr = Console(stderr=True)


def plain(value: object, style: str = "") -> Text:
    """``value`` as text shown exactly as it is (no markup, no highlighting)."""
    return Text(str(value), style=style)


def print_error(message: str) -> None:
    """Print ``error: MESSAGE`` on stderr, the message shown literally."""
    stderr.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)


def fail(message: str, code: int = 2) -> NoReturn:
    """Inside a command: print ``error: MESSAGE`` on stderr and exit with ``code``."""
    print_error(message)
    raise typer.Exit(code)
