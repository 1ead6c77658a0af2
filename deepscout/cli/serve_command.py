"""``deepscout serve``: the chat page, the research API and the OpenAI-compatible endpoints over HTTP;
``deepscout db prune``: delete old threads and runs."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from deepscout.cli.output import fail
from deepscout.errors import DeepscoutError
from deepscout.settings import Settings

db_app = typer.Typer(help="The database: retention.", no_args_is_help=True)


def serve(
    host: Annotated[
        str | None, typer.Option(help="Address to bind (default DEEPSCOUT_SERVER_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port (default DEEPSCOUT_SERVER_PORT, 8765).")] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="A model spec to serve (repeat for several).")
    ] = None,
) -> None:
    """Serve the chat page, the research API (REST + SSE) and OpenAI-compatible chat completions."""
    from deepscout.ui.server import build_server

    settings = Settings()
    overrides = {
        key: value for key, value in (("host", host), ("port", port), ("models", model)) if value is not None
    }
    settings = settings.model_copy(update={"server": settings.server.model_copy(update=overrides)})
    try:
        server = build_server(settings)
    except DeepscoutError as error:
        fail(str(error))
    typer.echo(f"deepscout serving on http://{settings.server.host}:{settings.server.port}")
    server.run()


@db_app.command("prune")
def prune(
    older_than: Annotated[int, typer.Option("--older-than", min=0, help="Age in days of what is deleted.")],
) -> None:
    """Delete threads (with their messages and research jobs) and runs older than N days."""
    from deepscout.memory import repository
    from deepscout.memory.db import open_database, write_session
    from deepscout.memory.tables import utcnow

    settings = Settings()
    try:
        database = open_database(settings)
    except DeepscoutError as error:
        fail(str(error))
    try:
        with write_session(database.session_factory) as session:
            pruned = repository.prune(session, before=utcnow() - timedelta(days=older_than))
    finally:
        database.dispose()
    typer.echo(f"deleted {pruned.threads} threads and {pruned.runs} runs older than {older_than} days")
