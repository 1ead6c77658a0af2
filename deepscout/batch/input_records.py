"""Reading a batch's input (JSONL or CSV) into validated records, and reporting the bad ones by line.

JSONL: one object per line with ``question`` (required), ``id`` (string or integer), ``settings`` (an
object of research options for this record) and ``metadata`` (an object carried to the output); blank
lines are skipped. CSV: a header row with a ``question`` column, optional ``id`` and ``settings`` (JSON
text) columns; every other column is carried as metadata. A bad record (empty, over-long, malformed, of
the wrong type, unknown fields, settings that do not validate) or a duplicate (same id, or same question
and settings) is reported with its line number and skipped; it never stops the batch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepscout.agent.options import ResearchOptions
from deepscout.batch.batch_errors import BatchInputError
from deepscout.batch.batch_options import record_options
from deepscout.memory.batch_records import NewRecord

RECORD_FIELDS = ("question", "id", "settings", "metadata")
MAX_LINE_BYTES = 1_000_000
MAX_KEY_CHARS = 128


@dataclass(frozen=True)
class InputProblem:
    """A skipped input record: its line number and why."""

    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


@dataclass(frozen=True)
class BatchInput:
    records: list[NewRecord]
    problems: list[InputProblem]
    sha256: str


class _BadRecord(ValueError):
    """One record is unusable; the message is the reason shown with its line number."""


def read_input(path: Path, *, base: ResearchOptions, max_question_chars: int) -> BatchInput:
    """The records of ``path`` (``.jsonl`` or ``.csv``), validated against ``base`` options."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise BatchInputError(f"cannot read {path}: {error.strerror or error}") from None
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise BatchInputError(f"{path} is neither JSONL (.jsonl) nor CSV (.csv)")
    raw = _csv_rows(data) if suffix == ".csv" else _jsonl_rows(data)
    records: list[NewRecord] = []
    problems: list[InputProblem] = []
    first_line: dict[str, int] = {}
    for line, row in raw:
        try:
            if isinstance(row, _BadRecord):
                raise row
            record = _record(line, row, base, max_question_chars)
        except _BadRecord as error:
            problems.append(InputProblem(line, str(error)))
            continue
        if record.key in first_line:
            problems.append(InputProblem(line, f"duplicate of line {first_line[record.key]} ({record.key})"))
            continue
        first_line[record.key] = line
        records.append(record)
    if not records:
        shown = "; ".join(f"line {p.line}: {p.reason}" for p in problems[:3])
        raise BatchInputError(f"{path} holds no usable record" + (f" ({shown})" if shown else ""))
    return BatchInput(records=records, problems=problems, sha256=hashlib.sha256(data).hexdigest())


def _jsonl_rows(data: bytes) -> list[tuple[int, dict[str, Any] | _BadRecord]]:
    rows: list[tuple[int, dict[str, Any] | _BadRecord]] = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if len(raw) > MAX_LINE_BYTES:
            rows.append((number, _BadRecord(f"line longer than {MAX_LINE_BYTES} bytes")))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rows.append((number, _BadRecord("not UTF-8 text")))
            continue
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            rows.append((number, _BadRecord(f"malformed JSON: {error.msg} at column {error.colno}")))
            continue
        if not isinstance(value, dict):
            rows.append((number, _BadRecord(f"expected a JSON object, got {type(value).__name__}")))
            continue
        unknown = sorted(set(value) - set(RECORD_FIELDS))
        if unknown:
            expected = ", ".join(RECORD_FIELDS)
            rows.append((number, _BadRecord(f"unknown fields {unknown}; expected {expected}")))
            continue
        rows.append((number, value))
    return rows


def _csv_rows(data: bytes) -> list[tuple[int, dict[str, Any] | _BadRecord]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise BatchInputError(f"the CSV file is not UTF-8 text (byte {error.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "question" not in reader.fieldnames:
        raise BatchInputError("the CSV file needs a header row with a 'question' column")
    rows: list[tuple[int, dict[str, Any] | _BadRecord]] = []
    try:
        for row in reader:
            line = reader.line_num
            if None in row or any(value is None for value in row.values()):
                rows.append((line, _BadRecord("wrong number of columns")))
                continue
            if not any(value.strip() for value in row.values()):
                continue
            record: dict[str, Any] = {"question": row["question"]}
            if row.get("id"):
                record["id"] = row["id"]
            if row.get("settings"):
                try:
                    record["settings"] = json.loads(row["settings"])
                except json.JSONDecodeError as error:
                    rows.append((line, _BadRecord(f"settings: malformed JSON: {error.msg}")))
                    continue
            record["metadata"] = {k: v for k, v in row.items() if k not in RECORD_FIELDS}
            rows.append((line, record))
    except csv.Error as error:
        raise BatchInputError(f"the CSV file is malformed at line {reader.line_num}: {error}") from None
    return rows


def _record(line: int, row: dict[str, Any], base: ResearchOptions, max_chars: int) -> NewRecord:
    question = row.get("question")
    if not isinstance(question, str):
        raise _BadRecord(f"question must be a string, got {type(question).__name__}")
    question = " ".join(question.split())
    if not question:
        raise _BadRecord("empty question")
    if "\x00" in question:
        raise _BadRecord("question holds a NUL character")
    if len(question) > max_chars:
        raise _BadRecord(f"question longer than {max_chars} characters ({len(question)})")
    settings = row.get("settings", {})
    if not isinstance(settings, dict):
        raise _BadRecord(f"settings must be an object, got {type(settings).__name__}")
    metadata = row.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _BadRecord(f"metadata must be an object, got {type(metadata).__name__}")
    try:
        options = record_options(base, settings)
    except ValueError as error:
        raise _BadRecord(str(error)) from None
    key = _key(row.get("id"), question, settings)
    return NewRecord(
        line=line, key=key, question=question, options=options.model_dump(mode="json"), meta=metadata
    )


def _key(given: Any, question: str, settings: dict[str, Any]) -> str:
    """The record's id as given, else a digest of its question and settings (so repeats are caught)."""
    if given is None:
        digest = hashlib.sha256(json.dumps([question, settings], sort_keys=True).encode()).hexdigest()
        return f"sha256:{digest[:32]}"
    if isinstance(given, bool) or not isinstance(given, (str, int)):
        raise _BadRecord(f"id must be a string or an integer, got {type(given).__name__}")
    key = str(given).strip()
    if not key or len(key) > MAX_KEY_CHARS:
        raise _BadRecord(f"id must be 1 to {MAX_KEY_CHARS} characters")
    return key
