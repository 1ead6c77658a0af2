"""``deepscout batch run|resume|status|list``: research many questions from a file (wiring only)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from deepscout.cli.output import fail, plain

if TYPE_CHECKING:
    from collections.abc import Callable

    from deepscout.batch.batch_api import BatchOutcome
    from deepscout.batch.batch_progress import ProgressCallback
    from deepscout.batch.batch_store import BatchView

app = typer.Typer(
    help="Batch research: many questions from a JSONL/CSV file, resumable after any crash.",
    no_args_is_help=True,
)
console = Console()
BATCH_ID = Annotated[str, typer.Argument(help="The batch job id (`deepscout batch list`).")]


@app.command("run")
def run(
    input_file: Annotated[Path, typer.Argument(help="JSONL (question, id, settings, metadata) or CSV.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder: results.jsonl and the summary.")],
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="Records in flight at once.")] = 4,
    model: Annotated[str | None, typer.Option(help="Chat model spec, loaded once for the job.")] = None,
    search: Annotated[
        Literal["local", "web", "both"], typer.Option(help="local corpus, web or both.")
    ] = "local",
    max_steps: Annotated[int, typer.Option(min=1, max=50, help="Search rounds per record.")] = 3,
    wall_time: Annotated[float, typer.Option(min=1.0, help="Seconds per record.")] = 300.0,
    executor: Annotated[
        Literal["local", "ray"],
        typer.Option(help="local threads, or Ray tasks (needs the ray extra)."),
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray cluster to join (default: a local one).")
    ] = None,
    ray_workers: Annotated[
        int, typer.Option(min=1, max=1024, help="Ray worker actors (one model each).")
    ] = 2,
    attempts: Annotated[int, typer.Option(min=1, max=20, help="Tries per record on transient errors.")] = 3,
    price_input: Annotated[float, typer.Option(min=0, help="Cost per million prompt tokens computed.")] = 0.0,
    price_cached: Annotated[float, typer.Option(min=0, help="Cost per million prompt tokens reused.")] = 0.0,
    price_output: Annotated[float, typer.Option(min=0, help="Cost per million output tokens.")] = 0.0,
) -> None:
    """Research every question of INPUT_FILE; stored as it goes (`batch resume` continues after a crash)."""
    from deepscout.agent.options import Budgets, ResearchOptions
    from deepscout.batch.batch_api import run_batch
    from deepscout.batch.batch_options import BatchOptions, Prices
    from deepscout.settings import Settings

    settings = Settings()
    options = BatchOptions(
        research=ResearchOptions(
            model=model, search=search, budgets=Budgets(max_steps=max_steps, wall_time_s=wall_time)
        ),
        concurrency=concurrency,
        executor=executor,
        ray_address=ray_address,
        ray_workers=ray_workers,
        attempts=attempts,
        prices=Prices(
            computed_per_million=price_input, reused_per_million=price_cached, output_per_million=price_output
        ),
    )
    _drive(
        lambda progress: run_batch(
            input_file, out_dir=out, settings=settings, options=options, progress=progress
        )
    )


@app.command("resume")
def resume(
    batch_id: BATCH_ID,
    concurrency: Annotated[int | None, typer.Option(min=1, max=256, help="Records in flight.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Answer the records that failed once more.")] = False,
) -> None:
    """Continue a batch job (after a crash, Ctrl-C or kill -9); each record is answered once."""
    from deepscout.batch.batch_api import resume_batch
    from deepscout.settings import Settings

    settings = Settings()
    _drive(
        lambda progress: resume_batch(
            batch_id, settings=settings, concurrency=concurrency, retry_failed=retry_failed, progress=progress
        )
    )


def _drive(start: Callable[[ProgressCallback], BatchOutcome]) -> None:
    from deepscout.batch.batch_progress import progress_bar
    from deepscout.errors import DeepscoutError

    try:
        with progress_bar() as progress:
            outcome = start(progress)
    except DeepscoutError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail(
            "interrupted; `deepscout batch list` shows the job, `deepscout batch resume JOB` continues it",
            130,
        )
    _show_outcome(outcome)


def _show_outcome(outcome: BatchOutcome) -> None:
    for problem in outcome.problems:
        console.print(plain(f"skipped line {problem.line}: {problem.reason}", "yellow"))
    if outcome.totals is None:
        console.print(
            plain(f"batch {outcome.batch_id} interrupted; resume: deepscout batch resume {outcome.batch_id}")
        )
        raise typer.Exit(1)
    t = outcome.totals
    console.print(
        plain(
            f"batch {outcome.batch_id}: {t.succeeded} answered, {t.failed} failed, {t.skipped} input records "
            f"skipped; tokens prompt {t.tokens['prompt_tokens']} (reused {t.tokens['reused_tokens']}), "
            f"output {t.tokens['output_tokens']}; cost {t.cost:.4f}"
        )
    )
    console.print(
        plain(f"results: {outcome.out_dir / 'results.jsonl'}  summary: {outcome.out_dir / 'summary.html'}")
    )


@app.command("status")
def status(batch_id: BATCH_ID) -> None:
    """Show a batch job: its state, records by status, and the input records it skipped."""
    from deepscout.batch.batch_api import batch_status
    from deepscout.errors import DeepscoutError
    from deepscout.settings import Settings

    try:
        view = batch_status(batch_id, settings=Settings())
    except DeepscoutError as error:
        fail(str(error))
    console.print(_table([view]))
    for problem in view.problems:
        console.print(plain(f"skipped line {problem['line']}: {problem['reason']}", "yellow"))
    if view.error:
        console.print(plain(f"error: {view.error}", "red"))


@app.command("list")
def list_jobs(limit: Annotated[int, typer.Option(min=1, max=10_000, help="Newest N jobs.")] = 50) -> None:
    """List batch jobs, newest first."""
    from deepscout.batch.batch_api import list_batch_jobs
    from deepscout.settings import Settings

    views = list_batch_jobs(settings=Settings(), limit=limit)
    if not views:
        console.print("no batch jobs yet; start one with `deepscout batch run INPUT --out DIR`")
        return
    console.print(_table(views))


def _table(views: list[BatchView]) -> Table:
    table = Table("job", "status", "records", "answered", "failed", "left", "skipped", "created", "output")
    table.columns[0].no_wrap = True
    for view in views:
        counts = view.counts
        left = sum(counts.get(name, 0) for name in ("queued", "running", "interrupted"))
        table.add_row(
            view.id,
            view.status,
            str(view.total),
            str(counts.get("succeeded", 0)),
            str(counts.get("failed", 0)),
            str(left),
            str(len(view.problems)),
            view.created_at.strftime("%Y-%m-%d %H:%M"),
            plain(view.out_dir),
        )
    return table
