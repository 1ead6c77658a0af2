"""Evaluation data sets in one schema, and loaders for the formats we read.

An item is a question with gold answers (aliases included), tags (difficulty, objective/subjective, ...)
and, where the data set has a corpus, the ids of its supporting documents. A data set is items plus an
optional corpus of whole documents; data sets without a corpus (FRAMES, SimpleQA) need web search.

Formats read:
- our JSONL (`items.jsonl` lines: id, question, answers, tags, supporting_doc_ids; optional sibling
  `corpus.jsonl` lines: id, title, text);
- HotpotQA (a JSON list with question/answer/level/type/supporting_facts, and a corpus JSON object
  title → list of sentences);
- MuSiQue (JSONL with `paragraphs` of {idx, title, paragraph_text, is_supporting}, answer and
  answer_aliases);
- plain question/answer sets (JSONL or CSV with `question`/`Prompt` and `answer`/`Answer` columns).
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepscout.errors import DeepscoutError


class DatasetError(DeepscoutError, ValueError):
    """A data set file is missing or malformed; the message names the file and the line."""


@dataclass(frozen=True)
class EvalItem:
    id: str
    question: str
    answers: tuple[str, ...]
    tags: dict[str, str] = field(default_factory=dict)
    supporting_doc_ids: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "question": self.question,
            "answers": list(self.answers),
            "tags": dict(self.tags),
            "supporting_doc_ids": list(self.supporting_doc_ids),
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> EvalItem:
        """An item from a stored row (written by :meth:`to_json`)."""
        return cls(
            id=str(row["id"]),
            question=str(row["question"]),
            answers=tuple(map(str, row["answers"])),
            tags={str(k): str(v) for k, v in (row.get("tags") or {}).items()},
            supporting_doc_ids=tuple(map(str, row.get("supporting_doc_ids") or ())),
        )


ITEM_FIELDS = ("id", "question", "answers", "tags", "supporting_doc_ids")
"""The fields of an item line in our JSONL schema."""
_SCALAR = (str, int, float)


def _answers(value: Any, where: str) -> tuple[str, ...]:
    """Gold answers: a list of strings (or numbers), or one string or number as the only answer."""
    if isinstance(value, _SCALAR) and not isinstance(value, bool):
        values = [value]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(v, _SCALAR) and not isinstance(v, bool) for v in value)
    ):
        values = value
    else:
        raise DatasetError(f"{where}: 'answers' must be a non-empty list of strings, not {value!r}")
    answers = tuple(dict.fromkeys(str(v).strip() for v in values if str(v).strip()))
    if not answers:
        raise DatasetError(f"{where}: 'answers' holds no non-empty answer")
    return answers


def _tags(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: 'tags' must be a JSON object of name → value, not {value!r}")
    return {str(k): str(v) for k, v in value.items()}


def _doc_ids(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, _SCALAR) for v in value):
        raise DatasetError(f"{where}: 'supporting_doc_ids' must be a list of document ids, not {value!r}")
    return tuple(map(str, value))


def item_from_line(row: dict[str, Any], where: str) -> EvalItem:
    """An item of our JSONL schema, checked: unknown fields (a misspelt ``supporting_doc_ids`` would
    leave evidence recall silently empty) and wrongly typed ones are errors naming the line."""
    unknown = sorted(set(row) - set(ITEM_FIELDS))
    if unknown:
        raise DatasetError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; an item has "
            f"{', '.join(ITEM_FIELDS)} (put other labels in 'tags')"
        )
    for key in ("id", "question", "answers"):
        _require(row, key, where)
    if not isinstance(row["question"], str):
        raise DatasetError(f"{where}: 'question' must be a string, not {row['question']!r}")
    return EvalItem(
        id=str(row["id"]),
        question=row["question"],
        answers=_answers(row["answers"], where),
        tags=_tags(row.get("tags"), where),
        supporting_doc_ids=_doc_ids(row.get("supporting_doc_ids"), where),
    )


@dataclass(frozen=True)
class CorpusDoc:
    id: str
    title: str
    text: str


@dataclass(frozen=True)
class Dataset:
    name: str
    items: tuple[EvalItem, ...]
    corpus: tuple[CorpusDoc, ...] | None

    @property
    def needs_web(self) -> bool:
        return self.corpus is None

    def limited(self, limit: int | None) -> Dataset:
        return self if limit is None else Dataset(self.name, self.items[:limit], self.corpus)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """The lines of a JSON Lines file (one JSON object per line), numbered from 1."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if number == 1 and line.lstrip().startswith("["):
            raise DatasetError(
                f"{path}: expected JSON Lines (one JSON object per line), found a JSON array; write one "
                "object per line, or pass a HotpotQA folder for HotpotQA's JSON list"
            )
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path}:{number}: not valid JSON ({exc.msg}); expected one JSON object per line"
            ) from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, found {type(row).__name__}")
        yield number, row


def _unique(items: list[EvalItem], path: Path) -> tuple[EvalItem, ...]:
    """``items``, refused when two share an id (answers and verdicts are stored by item id)."""
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DatasetError(f"{path}: duplicate item id {item.id!r}; every item needs its own id")
        seen.add(item.id)
    return tuple(items)


def _require(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] in (None, ""):
        raise DatasetError(f"{where}: missing field {key!r}")
    return row[key]


def hotpotqa_corpus(corpus: dict[str, list[str]]) -> tuple[CorpusDoc, ...]:
    """HotpotQA's title → sentences mapping as whole documents (the sentences joined as written)."""
    return tuple(
        CorpusDoc(id=title, title=title, text="".join(sentences)) for title, sentences in corpus.items()
    )


def _supporting_titles(facts: Any, where: str) -> tuple[str, ...]:
    """HotpotQA's ``supporting_facts`` ([[title, sentence index], ...]) as the supporting titles."""
    if facts is None:
        return ()
    if not isinstance(facts, list) or not all(
        isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str) for fact in facts
    ):
        raise DatasetError(f"{where}: 'supporting_facts' must be a list of [title, sentence index] pairs")
    return tuple(dict.fromkeys(fact[0] for fact in facts))


def load_hotpotqa(directory: Path) -> Dataset:
    """`hotpotqa_*.json` questions and the `*_corpus.json` passages in DIRECTORY."""
    corpus_files = sorted(directory.glob("*corpus*.json"))
    question_files = sorted(p for p in directory.glob("*.json") if p not in corpus_files)
    if len(question_files) != 1 or len(corpus_files) != 1:
        found = ", ".join(p.name for p in sorted(directory.glob("*.json"))) or "no .json files"
        raise DatasetError(
            f"{directory}: a HotpotQA folder holds one questions JSON (a list) and one *corpus*.json "
            f"(title → sentences); found {found}"
        )
    rows = _read_json(question_files[0])
    if not isinstance(rows, list):
        raise DatasetError(f"{question_files[0]}: expected a JSON list of questions")
    items = []
    for index, row in enumerate(rows):
        where = f"{question_files[0]}[{index}]"
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: expected a question object, found {type(row).__name__}")
        items.append(
            EvalItem(
                id=str(row.get("_id") or row.get("id") or index),
                question=str(_require(row, "question", where)),
                answers=_answers(_require(row, "answer", where), where),
                tags={
                    "difficulty": str(row.get("level", "unknown")),
                    "type": str(row.get("type", "unknown")),
                    "kind": "objective",
                },
                supporting_doc_ids=_supporting_titles(row.get("supporting_facts"), where),
            )
        )
    corpus = _read_json(corpus_files[0])
    if not isinstance(corpus, dict) or not all(
        isinstance(sentences, list) and all(isinstance(x, str) for x in sentences)
        for sentences in corpus.values()
    ):
        raise DatasetError(f"{corpus_files[0]}: expected a JSON object title → list of sentences")
    return Dataset("hotpotqa", _unique(items, question_files[0]), hotpotqa_corpus(corpus))


def load_musique(path: Path) -> Dataset:
    """MuSiQue JSONL: each row carries its own paragraphs; the corpus is their union."""
    items = []
    docs: dict[str, CorpusDoc] = {}
    for number, row in _read_jsonl(path):
        where = f"{path}:{number}"
        paragraphs = row.get("paragraphs") or []
        if not isinstance(paragraphs, list) or not all(isinstance(p, dict) for p in paragraphs):
            raise DatasetError(
                f"{where}: 'paragraphs' must be a list of objects with title, paragraph_text and "
                "is_supporting"
            )
        supporting = []
        for paragraph in paragraphs:
            title = str(paragraph.get("title", ""))
            text = str(paragraph.get("paragraph_text", ""))
            doc_id = title
            if title in docs and docs[title].text != text:
                doc_id = f"{title}#{hashlib.sha1(text.encode()).hexdigest()[:10]}"
            docs.setdefault(doc_id, CorpusDoc(doc_id, title, text))
            if paragraph.get("is_supporting"):
                supporting.append(doc_id)
        aliases = row.get("answer_aliases") or []
        if not isinstance(aliases, list):
            raise DatasetError(f"{where}: 'answer_aliases' must be a list of strings, not {aliases!r}")
        answers = _answers([_require(row, "answer", where), *aliases], where)
        hops = str(row["id"]).split("hop")[0] + "hop" if "hop" in str(row.get("id", "")) else "unknown"
        items.append(
            EvalItem(
                id=str(_require(row, "id", where)),
                question=str(_require(row, "question", where)),
                answers=answers,
                tags={"difficulty": hops, "kind": "objective"},
                supporting_doc_ids=tuple(supporting),
            )
        )
    return Dataset(path.stem, _unique(items, path), tuple(docs.values()))


def load_qa_pairs(path: Path) -> Dataset:
    """A plain question/answer set (JSONL or CSV) with no corpus: FRAMES, SimpleQA and the like."""
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(enumerate(csv.DictReader(handle), start=2))
        except FileNotFoundError as exc:
            raise DatasetError(f"{path}: file not found") from exc
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    else:
        rows = list(_read_jsonl(path))
    items = []
    for number, row in rows:
        lowered = {str(k).lower(): v for k, v in row.items()}
        where = f"{path}:{number}"
        question = lowered.get("question") or lowered.get("prompt") or lowered.get("problem")
        answer = lowered.get("answer") or lowered.get("gold_answer")
        if not question or not answer:
            raise DatasetError(f"{where}: needs a question (or prompt) and an answer column")
        items.append(
            EvalItem(
                id=str(lowered.get("id") or number),
                question=str(question),
                answers=_answers(answer, where),
                tags={"difficulty": str(lowered.get("difficulty") or "unknown"), "kind": "objective"},
            )
        )
    return Dataset(path.stem, _unique(items, path), None)


CORPUS_FILE = "corpus.jsonl"
"""The corpus of a data set in our schema: this file beside the items file."""


def load_jsonl_dataset(path: Path) -> Dataset:
    """Our own schema: items JSONL, with an optional `corpus.jsonl` beside it."""
    items = _unique([item_from_line(row, f"{path}:{number}") for number, row in _read_jsonl(path)], path)
    corpus_path = path.with_name(CORPUS_FILE)
    corpus = None
    if corpus_path.is_file():
        corpus = tuple(
            CorpusDoc(
                str(_require(r, "id", f"{corpus_path}:{n}")),
                str(r.get("title", "")),
                str(_require(r, "text", f"{corpus_path}:{n}")),
            )
            for n, r in _read_jsonl(corpus_path)
        )
    elif any(item.supporting_doc_ids for item in items):
        raise DatasetError(
            f"{path}: items name supporting documents but there is no {CORPUS_FILE} beside it "
            f"(expected {corpus_path})"
        )
    return Dataset(path.stem, items, corpus)


def load_dataset(path: Path) -> Dataset:
    """Pick the loader from what PATH looks like."""
    if path.is_dir():
        return load_hotpotqa(path)
    if not path.exists():
        raise DatasetError(f"{path}: file not found")
    if path.suffix.lower() == ".csv":
        return load_qa_pairs(path)
    first = next(_read_jsonl(path), None)
    if first is None:
        raise DatasetError(f"{path}: no rows")
    row = first[1]
    if "paragraphs" in row:
        return load_musique(path)
    if "answers" in row and "id" in row:
        return load_jsonl_dataset(path)
    return load_qa_pairs(path)
