"""Progress of a batch: the counters a driver reports, and a Rich progress bar showing them (records
done of total, failures, throughput, ETA)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


@dataclass(frozen=True)
class BatchProgress:
    """Records of the job finished (``done``, of which ``failed``) out of ``total``; ``resumed``: finished
    before this driver started (not counted in its throughput)."""

    done: int
    failed: int
    total: int
    resumed: int
    elapsed_s: float

    @property
    def per_hour(self) -> float:
        fresh = self.done - self.resumed
        return fresh * 3600.0 / self.elapsed_s if self.elapsed_s > 0 and fresh > 0 else 0.0


ProgressCallback = Callable[[BatchProgress], None]


class _Counters(ProgressColumn):
    def render(self, task: Task) -> Text:
        failed = int(task.fields.get("failed", 0))
        per_hour = float(task.fields.get("per_hour", 0.0))
        return Text.assemble(
            (f"{failed} failed", "red" if failed else "dim"), "  ", (f"{per_hour:,.0f} records/h", "cyan")
        )


@contextmanager
def progress_bar(console: Console | None = None) -> Iterator[ProgressCallback]:
    """A Rich progress bar for a batch; yields the callback the driver reports to."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Counters(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console or Console(stderr=True)) as bar:
        tasks: list[TaskID] = []

        def report(progress: BatchProgress) -> None:
            if not tasks:  # started at the records finished earlier, so the ETA counts this run only
                tasks.append(bar.add_task("Researching", total=progress.total, completed=progress.done))
            task = tasks[0]
            bar.update(
                task,
                total=progress.total,
                completed=progress.done,
                failed=progress.failed,
                per_hour=progress.per_hour,
            )

        yield report


class ProgressCounter:
    """Counts finished records for a driver and reports each change."""

    def __init__(self, *, total: int, done: int, failed: int, report: ProgressCallback | None) -> None:
        self.total, self.done, self.failed, self.resumed = total, done, failed, done
        self._report = report
        self._started = time.monotonic()
        self.emit()

    def finished(self, *, failed: bool) -> None:
        self.done += 1
        self.failed += int(failed)
        self.emit()

    def emit(self) -> None:
        if self._report is not None:
            self._report(self.snapshot())

    def snapshot(self) -> BatchProgress:
        return BatchProgress(
            done=self.done,
            failed=self.failed,
            total=self.total,
            resumed=self.resumed,
            elapsed_s=time.monotonic() - self._started,
        )
