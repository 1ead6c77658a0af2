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
        return cls(
            id=str(row["id"]),
            question=str(row["question"]),
            answers=tuple(map(str, row["answers"])),
            tags={str(k): str(v) for k, v in (row.get("tags") or {}).items()},
            supporting_doc_ids=tuple(map(str, row.get("supporting_doc_ids") or ())),
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
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object")
        yield number, row


def _require(row: dict[str, Any], key: str, where: str) -> Any:
    if key not in row or row[key] in (None, ""):
        raise DatasetError(f"{where}: missing field {key!r}")
    return row[key]


def hotpotqa_corpus(corpus: dict[str, list[str]]) -> tuple[CorpusDoc, ...]:
    """HotpotQA's title → sentences mapping as whole documents (the sentences joined as written)."""
    return tuple(
        CorpusDoc(id=title, title=title, text="".join(sentences)) for title, sentences in corpus.items()
    )


def load_hotpotqa(directory: Path) -> Dataset:
    """`hotpotqa_*.json` questions and the `*_corpus.json` passages in DIRECTORY."""
    corpus_files = sorted(directory.glob("*corpus*.json"))
    question_files = sorted(p for p in directory.glob("*.json") if p not in corpus_files)
    if len(question_files) != 1 or len(corpus_files) != 1:
        raise DatasetError(f"{directory}: expected one questions JSON and one *corpus*.json")
    rows = _read_json(question_files[0])
    if not isinstance(rows, list):
        raise DatasetError(f"{question_files[0]}: expected a JSON list of questions")
    items = []
    for index, row in enumerate(rows):
        where = f"{question_files[0]}[{index}]"
        titles = dict.fromkeys(str(fact[0]) for fact in row.get("supporting_facts", []))
        items.append(
            EvalItem(
                id=str(row.get("_id") or row.get("id") or index),
                question=str(_require(row, "question", where)),
                answers=(str(_require(row, "answer", where)),),
                tags={
                    "difficulty": str(row.get("level", "unknown")),
                    "type": str(row.get("type", "unknown")),
                    "kind": "objective",
                },
                supporting_doc_ids=tuple(titles),
            )
        )
    corpus = _read_json(corpus_files[0])
    if not isinstance(corpus, dict):
        raise DatasetError(f"{corpus_files[0]}: expected a JSON object title → list of sentences")
    return Dataset("hotpotqa", tuple(items), hotpotqa_corpus(corpus))


def load_musique(path: Path) -> Dataset:
    """MuSiQue JSONL: each row carries its own paragraphs; the corpus is their union."""
    items = []
    docs: dict[str, CorpusDoc] = {}
    for number, row in _read_jsonl(path):
        where = f"{path}:{number}"
        supporting = []
        for paragraph in row.get("paragraphs", []):
            title = str(paragraph.get("title", ""))
            text = str(paragraph.get("paragraph_text", ""))
            doc_id = title
            if title in docs and docs[title].text != text:
                doc_id = f"{title}#{hashlib.sha1(text.encode()).hexdigest()[:10]}"
            docs.setdefault(doc_id, CorpusDoc(doc_id, title, text))
            if paragraph.get("is_supporting"):
                supporting.append(doc_id)
        answers = [str(_require(row, "answer", where)), *map(str, row.get("answer_aliases", []))]
        hops = str(row["id"]).split("hop")[0] + "hop" if "hop" in str(row.get("id", "")) else "unknown"
        items.append(
            EvalItem(
                id=str(_require(row, "id", where)),
                question=str(_require(row, "question", where)),
                answers=tuple(dict.fromkeys(answers)),
                tags={"difficulty": hops, "kind": "objective"},
                supporting_doc_ids=tuple(supporting),
            )
        )
    return Dataset(path.stem, tuple(items), tuple(docs.values()))


def load_qa_pairs(path: Path) -> Dataset:
    """A plain question/answer set (JSONL or CSV) with no corpus: FRAMES, SimpleQA and the like."""
    if path.suffix.lower() == ".csv":
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                rows = list(enumerate(csv.DictReader(handle), start=2))
        except FileNotFoundError as exc:
            raise DatasetError(f"{path}: file not found") from exc
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
                answers=(str(answer),),
                tags={"difficulty": str(lowered.get("difficulty") or "unknown"), "kind": "objective"},
            )
        )
    return Dataset(path.stem, tuple(items), None)


def load_jsonl_dataset(path: Path) -> Dataset:
    """Our own schema: items JSONL, with an optional `corpus.jsonl` beside it."""
    items = []
    for number, row in _read_jsonl(path):
        where = f"{path}:{number}"
        for key in ("id", "question", "answers"):
            _require(row, key, where)
        items.append(EvalItem.from_json(row))
    corpus_path = path.with_name("corpus.jsonl")
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
    return Dataset(path.stem, tuple(items), corpus)


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
