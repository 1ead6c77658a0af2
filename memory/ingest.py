"""Readers for the corpus input formats; each yields ``CorpusDocument`` objects lazily.

* JSONL: one JSON object a line with ``id``, ``title``, ``text`` and optionally ``url`` (other keys go to
  ``meta``); blank lines are skipped.
* HotpotQA corpus: one JSON object, title → list of sentences (joined as they are: HotpotQA sentences
  carry their own leading spaces); the title is the document id.
* Text/Markdown: a folder (searched recursively) or a single ``.txt``/``.md``/``.markdown`` file; the id
  is the path relative to the folder, the title the first Markdown heading, else the first non-blank line.

Bad input raises :class:`CorpusFormatError` naming the file and, where there is one, the line; a
document id (or HotpotQA title) given twice is bad input, never a silent replacement.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from deepscout.errors import DeepscoutError
from deepscout.memory.schemas import CorpusDocument

TEXT_SUFFIXES = (".txt", ".md", ".markdown")
InputFormat = Literal["jsonl", "hotpotqa", "text"]
MAX_TITLE_CHARS = 200


class CorpusFormatError(DeepscoutError, ValueError):
    """Unreadable or malformed corpus input; the message names the file (and line) and what is wrong."""

    def __init__(self, path: Path, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.problem = path, line, problem


@dataclass(frozen=True)
class CorpusInput:
    """A recognised input: its format, how many documents it holds (for progress) and its reader."""

    path: Path
    format: InputFormat
    count: int

    def documents(self) -> Iterator[CorpusDocument]:
        if self.format == "jsonl":
            return read_jsonl(self.path)
        if self.format == "hotpotqa":
            return read_hotpotqa(self.path)
        return read_text(self.path)


def open_input(path: Path) -> CorpusInput:
    """Recognise the format of ``path``, check every document and count them.

    The whole input is read once here, so a malformed line or file is reported before anything is
    stored (an ingest never stops half-way on bad input); documents are then read again, lazily.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusFormatError(path, "no such file or folder")
    if path.is_dir():
        if not _text_files(path):
            raise CorpusFormatError(path, f"folder holds no {'/'.join(TEXT_SUFFIXES)} files")
        return _checked(CorpusInput(path, "text", 0))
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return _checked(CorpusInput(path, "jsonl", 0))
    if suffix == ".json":
        return CorpusInput(path, "hotpotqa", len(_load_hotpotqa(path)))
    if suffix in TEXT_SUFFIXES:
        return _checked(CorpusInput(path, "text", 0))
    raise CorpusFormatError(
        path,
        "unknown corpus format: expected a .jsonl file (id, title, text, url), a HotpotQA .json corpus "
        "(title → sentences) or a folder of .txt/.md files",
    )


def _checked(found: CorpusInput) -> CorpusInput:
    """``found`` with its document count; a document id seen twice is an error (naming both lines), not
    a silent replacement of the first by the second."""
    first_line: dict[str, int | None] = {}
    for document, line in _numbered(found):
        if document.doc_id in first_line:
            earlier = first_line[document.doc_id]
            where = f" (first on line {earlier})" if earlier is not None else ""
            raise CorpusFormatError(found.path, f"duplicate document id {document.doc_id!r}{where}", line)
        first_line[document.doc_id] = line
    if not first_line:
        raise CorpusFormatError(found.path, "holds no documents")
    return CorpusInput(found.path, found.format, len(first_line))


def _numbered(found: CorpusInput) -> Iterator[tuple[CorpusDocument, int | None]]:
    if found.format == "jsonl":
        yield from _read_jsonl_numbered(found.path)
    else:
        yield from ((document, None) for document in found.documents())


def read_jsonl(path: Path) -> Iterator[CorpusDocument]:
    return (document for document, _line in _read_jsonl_numbered(path))


def _read_jsonl_numbered(path: Path) -> Iterator[tuple[CorpusDocument, int]]:
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as exc:
            problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deep"
            raise CorpusFormatError(path, f"invalid JSON ({problem})", number) from exc
        yield _jsonl_document(path, number, record), number


def _jsonl_document(path: Path, line: int, record: Any) -> CorpusDocument:
    if not isinstance(record, dict):
        raise CorpusFormatError(path, f"expected a JSON object, got {type(record).__name__}", line)
    missing = [key for key in ("id", "text") if record.get(key) in (None, "")]
    if missing:
        raise CorpusFormatError(path, f"missing required field(s): {', '.join(missing)}", line)
    text = record["text"]
    if not isinstance(text, str):
        raise CorpusFormatError(path, "field 'text' must be a string", line)
    title = record.get("title")
    if title is not None and not isinstance(title, str):
        raise CorpusFormatError(path, "field 'title' must be a string", line)
    url = record.get("url")
    if url is not None and not isinstance(url, str):
        raise CorpusFormatError(path, "field 'url' must be a string", line)
    extra = {key: value for key, value in record.items() if key not in ("id", "title", "text", "url")}
    return CorpusDocument(
        doc_id=str(record["id"]), title=title or _first_line(text), text=text, url=url, meta=extra
    )


def read_hotpotqa(path: Path) -> Iterator[CorpusDocument]:
    for title, sentences in _load_hotpotqa(path).items():
        yield CorpusDocument(doc_id=title, title=title, text="".join(sentences))


def _load_hotpotqa(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(_read_text_file(path), object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise CorpusFormatError(path, f"invalid JSON ({exc.msg})", exc.lineno) from exc
    except RecursionError as exc:
        raise CorpusFormatError(path, "invalid JSON (nested too deep)") from exc
    except _DuplicateKey as exc:
        raise CorpusFormatError(path, f"duplicate document title {exc.args[0]!r}") from exc
    if not isinstance(data, dict):
        raise CorpusFormatError(
            path,
            "expected a HotpotQA corpus (a JSON object: title → list of sentences), "
            f"got {type(data).__name__}",
        )
    for title, sentences in data.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise CorpusFormatError(path, f"entry {title!r} must be a list of sentence strings")
    return data


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise _DuplicateKey(key)
        data[key] = value
    return data


def read_text(path: Path) -> Iterator[CorpusDocument]:
    root = path if path.is_dir() else path.parent
    for file in _text_files(path) if path.is_dir() else [path]:
        text = _read_text_file(file)
        doc_id = file.relative_to(root).as_posix()
        yield CorpusDocument(doc_id=doc_id, title=_markdown_title(text) or file.stem, text=text)


def _text_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and not _hidden(p, folder)
    )


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _markdown_title(text: str) -> str | None:
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()[:MAX_TITLE_CHARS] or None
        if stripped:
            return stripped[:MAX_TITLE_CHARS]
    return None


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")[:MAX_TITLE_CHARS]


def _read_text_file(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CorpusFormatError(path, f"cannot read file ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CorpusFormatError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})", line) from exc


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line of a UTF-8 file, read as a stream."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise CorpusFormatError(path, f"cannot read file ({exc.strerror or exc})") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise CorpusFormatError(path, f"not UTF-8 text ({exc.reason})", number) from exc
            yield number, line
