"""Text extraction in worker processes that a hostile body cannot outlive or outgrow.

Parsing is where a small hostile file costs the most (a 7 KB PDF whose pages share one stream of 200k
text operators, an HTML page of 200k links), and a thread cannot be stopped. So every body is extracted
(``tools/extract.py``) in a worker process (``tools/extraction_worker.py``: a fresh interpreter, never a
``fork`` of a parent that runs threads) whose address space is capped with ``RLIMIT_AS``; the caller
waits at most the deadline, then kills the worker and starts another for the next page. A worker that
runs out of its memory cap, dies or is killed costs its page, never the run. Workers answer in JSON, so a
compromised worker cannot make the parent run code. They are started on first use (:meth:`prepare`
starts one while the page is still downloading), reused for later pages, and stopped by :meth:`close`
or when the pool is garbage-collected.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from deepscout.tools.extract import ExtractedDocument, ExtractionError

_JOIN_S = 2.0


@dataclass(frozen=True)
class ExtractionLimits:
    """What one page's extraction may cost: ``deadline_s`` seconds and ``memory_bytes`` of address space
    in a worker process; ``workers`` processes at most run at once."""

    deadline_s: float
    memory_bytes: int
    workers: int
    max_chars: int


class _Worker:
    """One worker process and the parent's end of its socket."""

    def __init__(self, memory_bytes: int) -> None:
        parent, child = socket.socketpair()
        command = [
            sys.executable,
            "-m",
            "deepscout.tools.extraction_worker",
            str(child.fileno()),
            str(memory_bytes),
        ]
        self.process = subprocess.Popen(
            command, pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        child.close()
        self.connection = Connection(parent.detach())

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.close()
        if self.alive():
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(_JOIN_S)


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class ExtractionPool:
    """Up to ``limits.workers`` extraction processes, each page under the deadline and memory cap."""

    def __init__(self, limits: ExtractionLimits) -> None:
        self.limits = limits
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(limits.workers)
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop_all, self._all)

    def prepare(self) -> None:
        """Start a worker now if none is idle, so that its start overlaps the download of the page."""
        with self._lock:
            if self._idle or len(self._all) >= self.limits.workers:
                return
            worker = _Worker(self.limits.memory_bytes)
            self._all.append(worker)
            self._idle.append(worker)

    def extract(
        self, body: bytes, content_type: str, url: str, *, deadline: float | None = None
    ) -> ExtractedDocument:
        """``extract_document`` in a worker, within ``limits.deadline_s`` and before ``deadline`` (a
        ``time.monotonic()`` value, the run's) if given; raises ``ExtractionError`` when the body is
        unreadable, when the worker runs past the deadline (it is killed) or out of its memory cap, or
        dies."""
        limits = self.limits
        ends = time.monotonic() + limits.deadline_s
        why = f"{limits.deadline_s:g}s (DEEPSCOUT_WEB_EXTRACT_DEADLINE_S)"
        if deadline is not None and deadline < ends:
            ends, why = deadline, "the run's wall-time budget"
        if not self._slots.acquire(timeout=max(0.0, ends - time.monotonic())):
            raise ExtractionError(f"{url}: no extraction worker came free before the deadline")
        try:
            worker = self._take()
            try:
                left = ends - time.monotonic()
                header = {"content_type": content_type, "url": url, "max_chars": limits.max_chars}
                status, value = self._run(worker, body, {**header, "deadline_s": left}, why)
            except BaseException:
                self._discard(worker)
                raise
            if status == "memory":
                self._discard(worker)
            else:
                self._give_back(worker)
        finally:
            self._slots.release()
        if status == "ok":
            return ExtractedDocument(**value)
        if status == "memory":
            raise ExtractionError(
                f"{url}: extraction ran out of its {limits.memory_bytes >> 20} MiB memory cap "
                "(DEEPSCOUT_WEB_EXTRACT_MEMORY_MB)"
            )
        raise ExtractionError(str(value))

    def _run(self, worker: _Worker, body: bytes, header: dict[str, Any], why: str) -> tuple[str, Any]:
        """Send one job (``header`` names its ``url`` and ``deadline_s``) and wait for the answer: the
        worker's ``(status, document or message)``; raises ``ExtractionError`` past the deadline or when
        the worker died."""
        url = header["url"]
        try:
            worker.connection.send_bytes(json.dumps(header).encode())
            worker.connection.send_bytes(body)
            if worker.connection.poll(max(0.0, header["deadline_s"])):
                answer = json.loads(worker.connection.recv_bytes())
                return str(answer["status"]), answer.get("document", answer.get("message"))
        except (EOFError, OSError) as exc:
            raise ExtractionError(
                f"{url}: the extraction worker died (exit code {worker.process.poll()}; "
                f"memory cap {self.limits.memory_bytes >> 20} MiB)"
            ) from exc
        raise ExtractionError(f"{url}: extraction did not finish within {why} and was stopped")

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive():
                    return worker
                self._all.remove(worker)
                worker.stop()
            worker = _Worker(self.limits.memory_bytes)
            self._all.append(worker)
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _discard(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        worker.stop()

    def close(self) -> None:
        """Stop every worker; a later ``extract`` starts new ones."""
        with self._lock:
            self._idle.clear()
            _stop_all(self._all)
