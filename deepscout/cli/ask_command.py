"""``deepscout ask``: research a question and print the cited answer and the sources read.

Progress (queries, documents read, tokens prefilled vs reused) goes to stderr as it happens; the answer
and the sources list go to stdout. Heavy imports happen inside the command so ``--help`` stays fast.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from deepscout.cli.input_checks import check_text, validation_summary
from deepscout.cli.output import fail

if TYPE_CHECKING:
    from deepscout.agent.api import ResearchResult
    from deepscout.settings import Settings

SEARCH_MODES = ("local", "web", "both")
RETRIEVALS = ("bm25", "dense", "hybrid")


def _progress(console: Console) -> Any:
    def show(event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "start":
            console.print(f"[dim]run {event['run_id']} · thread {event['thread_id']}[/]")
        elif kind == "resume":
            console.print(f"[dim]resuming thread {event['thread_id']} after round {event['step']}[/]")
        elif kind == "queries":
            queries = "; ".join(escape(q) for q in event["queries"])
            console.print(f"[bold cyan]round {event['step']}[/] searching: {queries}")
        elif kind == "search":
            console.print(f"  [dim]{event['tool']}[/] {escape(event['query'])!s} → {event['hits']} hits")
        elif kind == "source":
            console.print(f"  read [{event['n']}] {escape(event['title'])} ({event['chars']} chars)")
        elif kind == "dropped":
            console.print(
                f"  [yellow]context full:[/] dropped {event['passages_dropped']} passage(s) of [{event['n']}]"
            )
        elif kind == "tokens":
            console.print(
                f"  [dim]{event['node']}: {event['prompt_tokens']} prompt tokens, "
                f"{event['reused_tokens']} reused, {event['computed_tokens']} prefilled, "
                f"{event['output_tokens']} written[/]"
            )
        elif kind == "reflection":
            queries = "; ".join(escape(q) for q in event["queries"]) or "none (stopping)"
            console.print(f"  next: {queries}")
        elif kind == "stop":
            console.print(f"[dim]loop stopped: {escape(str(event['reason']))}[/]")
        elif kind == "citation_removed":
            console.print(f"  [yellow]removed citation {escape(str(event['marker']))}: no such source[/]")

    return show


def _print_result(console: Console, result: ResearchResult) -> None:
    console.print(result.answer, markup=False, highlight=False)
    if result.status == "fallback":
        reason = escape(result.fallback_reason or "no reason recorded")
        console.print(
            f"[yellow](the model gave no grounded answer: {reason}; the best sentences read are quoted)[/]"
        )
    cited = {citation.n for citation in result.citations}
    if result.sources:
        console.print("\nSources:")
        for source in result.sources:
            mark = "" if source["n"] in cited else "  (read, not cited)"
            where = f" — {source['url']}" if source["url"] else ""
            console.print(
                f"[{source['n']}] {source['title']}{where} (source {source['source_id']}){mark}",
                markup=False,
                highlight=False,
            )
    usage, tokens = result.usage, result.usage.tokens
    console.print(
        f"\n[dim]{usage.steps} round(s), {usage.tool_calls} tool call(s), "
        f"{tokens.prompt_tokens} prompt tokens ({tokens.reused_tokens} reused), "
        f"{tokens.output_tokens} written, {usage.seconds} s · thread {result.thread_id}[/]"
    )


def _require_collection(settings: Settings, name: str) -> None:
    from deepscout.memory.corpus import CorpusIndex
    from deepscout.memory.db import open_database

    database = open_database(settings)
    try:
        CorpusIndex(database.session_factory).require_collection(name)
    finally:
        database.dispose()


def ask(
    question: Annotated[str, typer.Argument(help="The question to research.")] = "",
    model: Annotated[str | None, typer.Option("--model", help="Chat model spec (default: settings).")] = None,
    search: Annotated[str, typer.Option("--search", help="Where to search: local, web or both.")] = "local",
    max_steps: Annotated[int, typer.Option("--max-steps", min=1, max=50, help="Search rounds.")] = 3,
    max_documents: Annotated[
        int, typer.Option("--max-documents", min=1, max=200, help="Documents read.")
    ] = 10,
    max_tool_calls: Annotated[
        int, typer.Option("--max-tool-calls", min=1, max=1000, help="Tool calls.")
    ] = 24,
    max_context_tokens: Annotated[
        int | None,
        typer.Option("--max-context-tokens", min=512, max=1 << 24, help="Context budget (default: window)."),
    ] = None,
    wall_time: Annotated[
        float, typer.Option("--wall-time", min=1.0, max=86400.0, help="Seconds for the whole run.")
    ] = 300.0,
    collection: Annotated[str | None, typer.Option("--collection", help="Search one collection.")] = None,
    retrieval: Annotated[
        str, typer.Option("--retrieval", help="Corpus ranking: bm25, dense (MiniLM) or hybrid.")
    ] = "bm25",
    resume: Annotated[
        str | None, typer.Option("--resume", metavar="THREAD", help="Resume an interrupted run.")
    ] = None,
) -> None:
    """Research QUESTION on the local corpus (or the web) and print a cited answer with its sources."""
    if not question.strip() and resume is None:
        fail("the question is empty; ask something, e.g. deepscout ask 'Who directed Alien?'")
    check_text(question, "question")
    if search not in SEARCH_MODES:
        fail(f"unknown search mode {search!r}; use one of: {', '.join(SEARCH_MODES)}")
    if retrieval not in RETRIEVALS:
        fail(f"unknown retrieval {retrieval!r}; use one of: {', '.join(RETRIEVALS)}")

    from pydantic import ValidationError

    from deepscout.agent.api import research
    from deepscout.agent.options import Budgets, ResearchOptions
    from deepscout.errors import DeepscoutError
    from deepscout.model_runtime.chat import BackendRegistry
    from deepscout.settings import Settings

    try:
        settings = Settings()
        spec = model or settings.model
        options = ResearchOptions(
            model=spec,
            search=search,  # type: ignore[arg-type]
            budgets=Budgets(
                max_steps=max_steps,
                max_documents=max_documents,
                max_tool_calls=max_tool_calls,
                max_context_tokens=max_context_tokens,
                wall_time_s=wall_time,
            ),
            collection=collection,
            retrieval=retrieval,  # type: ignore[arg-type]
        )
    except ValidationError as error:
        fail(validation_summary(error))
    stderr = Console(stderr=True)
    thread_id = resume or uuid.uuid4().hex
    try:
        BackendRegistry().parse(spec)
        if collection is not None:
            _require_collection(settings, collection)  # before the model loads: fail in a second, not minutes
        result = research(
            question, settings=settings, options=options, thread_id=thread_id, on_event=_progress(stderr)
        )
    except DeepscoutError as error:
        fail(str(error))
    except KeyboardInterrupt:
        stderr.print(f"[yellow]interrupted; resume with: deepscout ask --resume {thread_id}[/]")
        raise typer.Exit(130) from None
    _print_result(Console(), result)
