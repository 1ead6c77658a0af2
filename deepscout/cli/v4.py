"""``deepscout v4 ...``: run the DeepSeek-V4 runtime on a checkpoint (issues 3 and 4)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the embedded DeepSeek-V4 runtime on a checkpoint.", no_args_is_help=True)
