"""The ``deepscout`` command line: wiring only; each sub-app lives in its own module.

Heavy imports (torch, transformers, langgraph) happen inside the commands, so ``--help`` stays fast.
"""

from __future__ import annotations

import typer

from deepscout.cli import (
    ask_command,
    batch_commands,
    corpus_commands,
    eval_commands,
    models_commands,
    serve_command,
    v4_commands,
)
from deepscout.process import configure_process

app = typer.Typer(
    name="deepscout",
    help="Agentic search and long-context research on an embedded model.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.command("ask")(ask_command.ask)
app.command("setup")(models_commands.setup)
app.add_typer(corpus_commands.app, name="corpus")
app.add_typer(models_commands.app, name="models")
app.add_typer(eval_commands.app, name="eval")
app.add_typer(v4_commands.app, name="v4")
app.command("serve")(serve_command.serve)
app.add_typer(serve_command.db_app, name="db")
app.add_typer(batch_commands.app, name="batch")


def main() -> None:
    from pydantic import ValidationError

    from deepscout.cli.input_checks import validation_summary
    from deepscout.cli.output import print_error

    configure_process()
    try:
        app()
    except ValidationError as error:  # DEEPSCOUT_* settings that do not validate: one line, not a traceback
        print_error(f"invalid settings: {validation_summary(error)}")
        raise SystemExit(2) from None
