"""The ``deepscout`` command line: wiring only; each sub-app lives in its own module.

Heavy imports (torch, transformers, langgraph) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import os

import typer

from deepscout.cli import ask, corpus, eval, models, v4

app = typer.Typer(
    name="deepscout",
    help="Agentic search and long-context research on an embedded model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("ask")(ask.ask)
app.command("setup")(models.setup)
app.add_typer(corpus.app, name="corpus")
app.add_typer(models.app, name="models")
app.add_typer(eval.app, name="eval")
app.add_typer(v4.app, name="v4")


def main() -> None:
    # The CLI shows its own progress; transformers' per-load progress bars would only interleave with it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    app()
