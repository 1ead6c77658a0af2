"""``deepscout eval run|report|list``: agentic search vs the RAG baseline (wiring only)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from deepscout.cli.output import fail

app = typer.Typer(help="Agentic search vs RAG: run evaluations and write reports.", no_args_is_help=True)
console = Console()


@app.command("run")
def run(
    dataset: Annotated[Path, typer.Argument(help="HotpotQA folder, MuSiQue/our JSONL, or a QA CSV/JSONL.")],
    systems: Annotated[str, typer.Option(help="Comma-separated systems to compare.")] = "agent,rag",
    model: Annotated[str | None, typer.Option(help="Chat model spec for both systems.")] = None,
    judge: Annotated[
        str | None, typer.Option(help="Chat model spec of the pairwise judge (none: skip).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N items.")] = None,
    concurrency: Annotated[int, typer.Option(help="Items in flight (remote backends only).")] = 1,
    search: Annotated[str, typer.Option(help="local, web or both.")] = "local",
    retrieval: Annotated[str, typer.Option(help="bm25, dense or hybrid (both systems).")] = "bm25",
    top_k: Annotated[int, typer.Option(help="Documents the RAG baseline reads.")] = 5,
    max_steps: Annotated[int, typer.Option(help="Agent search rounds.")] = 3,
    max_documents: Annotated[int, typer.Option(help="Documents the agent reads.")] = 10,
    model_queries: Annotated[
        int, typer.Option(help="Queries the agent's model may propose per round (0: none).")
    ] = 3,
    max_tool_calls: Annotated[int, typer.Option(help="Agent tool calls.")] = 24,
    wall_time: Annotated[float, typer.Option(help="Seconds per question and system.")] = 300.0,
    seed: Annotated[int, typer.Option(help="Recorded in the manifest; part of the run id.")] = 0,
) -> None:
    """Run both systems on DATASET (stored as they go; rerunning the same config resumes)."""
    from pydantic import ValidationError

    from deepscout.agent.options import Budgets
    from deepscout.errors import DeepscoutError
    from deepscout.evals.runner import EvalOptions, run_eval
    from deepscout.settings import Settings

    settings = Settings()
    if retrieval not in ("bm25", "dense", "hybrid"):
        fail(f"unknown retrieval {retrieval!r}; choose bm25, dense or hybrid")
    try:
        options = EvalOptions(
            dataset=dataset,
            systems=tuple(s.strip() for s in systems.split(",") if s.strip()),
            model=model or settings.model,
            judge=judge,
            limit=limit,
            concurrency=concurrency,
            search=search,
            retrieval=retrieval,  # type: ignore[arg-type]
            top_k=top_k,
            budgets=Budgets(
                max_steps=max_steps,
                max_documents=max_documents,
                max_tool_calls=max_tool_calls,
                wall_time_s=wall_time,
            ),
            model_queries=model_queries,
            seed=seed,
        )
    except ValidationError as error:
        fail(str(error))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done, total=total)

        try:
            outcome = run_eval(options, settings=settings, progress=progress)
        except DeepscoutError as error:
            fail(str(error))
    console.print(
        f"eval run [bold]{outcome.run_id}[/]: {outcome.items} items, {outcome.answered} answers new, "
        f"{outcome.skipped} already stored, {outcome.judged} judged"
    )
    for failure in outcome.failures:
        console.print(f"[yellow]failed:[/] {failure}")
    console.print(f"report: deepscout eval report {outcome.run_id}")


@app.command("report")
def report(
    run_id: Annotated[str, typer.Argument(help="Eval run id (or a unique prefix).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default: HOME/reports/RUN).")] = None,
) -> None:
    """Write the Markdown + HTML report (with PNG charts) of an eval run."""
    from deepscout.evals.report import write_report
    from deepscout.evals.store import EvalRunNotFoundError, load_run
    from deepscout.memory.db import open_database
    from deepscout.settings import Settings

    settings = Settings()
    db = open_database(settings)
    try:
        with db.session_factory() as session:
            try:
                run, items, answers, verdicts = load_run(session, run_id=run_id)
            except EvalRunNotFoundError as error:
                fail(str(error))
            manifest = dict(run.manifest)
            full_id = run.id
    finally:
        db.dispose()
    systems = manifest.get("config", {}).get("systems") or ["agent", "rag"]
    files = write_report(
        out_dir=out or settings.home / "reports" / full_id,
        manifest=manifest,
        items=items,
        answers=answers,
        verdicts=verdicts,
        first=systems[0],
        second=systems[-1],
    )
    console.print(f"wrote {files.markdown}\nwrote {files.html}")


@app.command("list")
def list_runs() -> None:
    """List recent eval runs."""
    from deepscout.evals.store import list_eval_runs
    from deepscout.memory.db import open_database
    from deepscout.settings import Settings

    db = open_database(Settings())
    try:
        with db.session_factory() as session:
            table = Table("run", "dataset", "systems", "model", "items", "created")
            for run in list_eval_runs(session):
                config = run.config
                table.add_row(
                    run.id,
                    run.dataset,
                    ",".join(config.get("systems", [])),
                    str(config.get("model")),
                    str(len(run.items)),
                    run.created_at.strftime("%Y-%m-%d %H:%M"),
                )
    finally:
        db.dispose()
    console.print(table)
