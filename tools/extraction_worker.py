"""The extraction worker process: ``python -m deepscout.tools.extraction_worker FD MEMORY_BYTES``.

It caps its own address space (``RLIMIT_AS``), then reads jobs from the socket ``FD`` that its parent
(``tools/extraction_pool.py``) handed it, and answers each with JSON (never pickle: a worker parsing
hostile bytes must not be able to make its parent run code). A job is a JSON header (``content_type``,
``url``, ``max_chars``, ``deadline_s``) and the body; the answer is ``{"status": "ok", "document":
{...}}``, ``{"status": "error", "message": ...}`` or ``{"status": "memory"}`` (after which it exits).
A PDF stops reading pages at ``PARTIAL_SHARE`` of the deadline and answers with the pages read (a
single page past the deadline still gets the worker killed). An alarm ends the worker at twice the
job's deadline, so it cannot outlive a job even when its parent
died without killing it; the parent's end of the socket closing ends an idle worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import resource
import signal
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

PARTIAL_SHARE = 0.5
"""The share of its deadline after which a PDF stops starting new pages and answers with those read."""


def serve(connection: Connection) -> None:
    from deepscout.tools.extract import ExtractionError, extract_document

    while True:
        try:
            header = json.loads(connection.recv_bytes())
            body = connection.recv_bytes()
        except (EOFError, OSError):
            return
        url, deadline_s = str(header["url"]), float(header["deadline_s"])
        signal.alarm(max(1, math.ceil(2 * deadline_s)))  # SIGALRM ends the process
        stop_at = time.monotonic() + PARTIAL_SHARE * deadline_s  # a long PDF keeps the pages read by then
        try:
            document = extract_document(
                body, header["content_type"], url, max_chars=header["max_chars"], stop_at=stop_at
            )
            answer: dict[str, Any] = {"status": "ok", "document": dataclasses.asdict(document)}
        except ExtractionError as exc:
            answer = {"status": "error", "message": str(exc)}
        except MemoryError:
            del body
            with contextlib.suppress(MemoryError, OSError):
                connection.send_bytes(b'{"status": "memory"}')
            return  # the heap may be left fragmented: a fresh worker takes the next page
        except Exception as exc:  # a parser's bug on hostile input: this page is unreadable, the worker lives
            answer = {"status": "error", "message": f"{url}: unreadable ({type(exc).__name__}: {exc})"[:500]}
        signal.alarm(0)
        del body
        connection.send_bytes(json.dumps(answer).encode())


def main() -> None:
    fd, memory_bytes = int(sys.argv[1]), int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    serve(Connection(fd))


if __name__ == "__main__":
    main()
