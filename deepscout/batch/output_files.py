"""The output folder of a batch job: its owner marker, ``results.jsonl``, and atomic whole-file writes.

Exactly-once: the database is the record of truth (a record's output line is stored once, in the same
transaction that marks it finished). ``results.jsonl`` is rebuilt from it atomically (temporary file,
fsync, rename) whenever a driver starts and when the job ends, and in between a single writer appends
each line after its transaction has committed. A crash can therefore leave the file behind the
database, or with a torn last line, but never with a line twice or a line the database lacks; the next
start rebuilds it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from deepscout.batch.batch_errors import OutputFolderError

MARKER = "batch.json"
RESULTS = "results.jsonl"
OUR_FILES = (MARKER, RESULTS, "summary.md", "summary.html", "summary.json")


def json_line(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, sort_keys=True) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader (or a crash) sees the old or the new file whole."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def owner_of(out_dir: Path) -> str | None:
    """The batch id recorded in the folder's marker, or None without one."""
    try:
        return str(json.loads((out_dir / MARKER).read_text(encoding="utf-8"))["batch_id"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return "an unreadable batch.json"


def claim_folder(out_dir: Path, *, batch_id: str, input_path: str) -> None:
    """Make ``out_dir`` this batch's folder; refuse one holding another job's (or unknown) results."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(f"cannot create the output folder {out_dir}: {error.strerror}") from None
    if not out_dir.is_dir():
        raise OutputFolderError(f"{out_dir} is not a folder")
    check_folder(out_dir, batch_id=None)
    write_atomically(out_dir / MARKER, json.dumps({"batch_id": batch_id, "input": input_path}, indent=2))


def check_folder(out_dir: Path, *, batch_id: str | None) -> None:
    """Refuse ``out_dir`` if it holds results that are not batch ``batch_id``'s (None: any results)."""
    owner = owner_of(out_dir)
    if owner is not None and owner != batch_id:
        raise OutputFolderError(
            f"{out_dir} already holds the results of batch job {owner}; choose another --out folder "
            f"(or `deepscout batch resume {owner}`)"
        )
    if owner is None and any((out_dir / name).exists() for name in OUR_FILES):
        raise OutputFolderError(f"{out_dir} already holds batch results of unknown origin; choose another")


class ResultsFile:
    """``results.jsonl`` of one driver: rebuilt from stored lines, then appended line by line."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / RESULTS
        self._lock = threading.Lock()
        self._handle: IO[str] | None = None

    def rebuild(self, results: Iterable[dict[str, Any]]) -> None:
        with self._lock:
            self._close()
            write_atomically(self.path, "".join(json_line(result) for result in results))

    def append(self, result: dict[str, Any]) -> None:
        with self._lock:
            if self._handle is None:
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open)
            self._handle.write(json_line(result))
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
