from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deepscout.evals.datasets import DatasetError, load_dataset


def test_hotpotqa_loads_items_tags_and_supporting_titles(hotpotqa_dir: Path) -> None:
    dataset = load_dataset(hotpotqa_dir)
    assert len(dataset.items) == 100
    assert dataset.corpus is not None and len(dataset.corpus) == 994
    first = dataset.items[0]
    assert first.answers == ("a spirit",)
    assert first.tags["difficulty"] in {"easy", "medium", "hard"}
    assert set(first.supporting_doc_ids) == {"Alû", "Lilu (mythology)"}
    titles = {doc.id for doc in dataset.corpus}
    assert all(set(item.supporting_doc_ids) <= titles for item in dataset.items)


def test_musique_marks_supporting_paragraphs(tmp_path: Path) -> None:
    row = {
        "id": "2hop__1_2",
        "question": "Q?",
        "answer": "Paris",
        "answer_aliases": ["City of Light"],
        "paragraphs": [
            {"idx": 0, "title": "France", "paragraph_text": "Capital is Paris.", "is_supporting": True},
            {"idx": 1, "title": "Spain", "paragraph_text": "Capital is Madrid.", "is_supporting": False},
        ],
    }
    path = tmp_path / "musique.jsonl"
    path.write_text(json.dumps(row) + "\n")
    dataset = load_dataset(path)
    assert dataset.items[0].answers == ("Paris", "City of Light")
    assert dataset.items[0].supporting_doc_ids == ("France",)
    assert dataset.items[0].tags["difficulty"] == "2hop"
    assert dataset.corpus is not None and len(dataset.corpus) == 2


def test_plain_qa_csv_has_no_corpus_and_needs_web(tmp_path: Path) -> None:
    path = tmp_path / "simpleqa.csv"
    path.write_text("problem,answer\nWho?,Someone\n")
    dataset = load_dataset(path)
    assert dataset.needs_web
    assert dataset.items[0].question == "Who?"


def test_bad_rows_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "1", "question": "Q", "answers": ["a"]}\nnot json\n')
    with pytest.raises(DatasetError, match=r"items.jsonl:2"):
        load_dataset(path)
    with pytest.raises(DatasetError, match="file not found"):
        load_dataset(tmp_path / "missing.jsonl")


def _jsonl(path: Path, *rows: object) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "1", "question": "Q?", "answers": ["a"], "tags": ["easy"]}, "'tags' must be a JSON object"),
        ({"id": "1", "question": "Q?", "answers": {"a": 1}}, "'answers' must be a non-empty list"),
        ({"id": "1", "question": "Q?", "answers": []}, "'answers' must be a non-empty list"),
        (
            {"id": "1", "question": "Q?", "answers": ["a"], "supporting_ids": ["d1"]},
            "unknown field(s) 'supporting_ids'",
        ),
        ({"id": "1", "question": "Q?", "answers": ["a"], "supporting_doc_ids": "d1"}, "list of document ids"),
    ],
)
def test_our_jsonl_fields_are_checked(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(DatasetError, match=re.escape(message)) as error:
        load_dataset(_jsonl(tmp_path / "items.jsonl", row))
    assert "items.jsonl:1" in str(error.value) and "\n" not in str(error.value)


def test_scalar_answers_are_one_answer_not_letters(tmp_path: Path) -> None:
    rows = [
        {"id": "1", "question": "Which glacier?", "answers": "Aletsch"},
        {"id": "2", "question": "How many moons?", "answers": 2},
    ]
    dataset = load_dataset(_jsonl(tmp_path / "items.jsonl", *rows))
    assert [item.answers for item in dataset.items] == [("Aletsch",), ("2",)]


def test_duplicate_ids_are_refused(tmp_path: Path) -> None:
    rows = [{"id": "1", "question": "A?", "answers": ["a"]}, {"id": "1", "question": "B?", "answers": ["b"]}]
    with pytest.raises(DatasetError, match="duplicate item id '1'"):
        load_dataset(_jsonl(tmp_path / "items.jsonl", *rows))


def test_non_utf8_and_json_array_files_say_what_was_expected(tmp_path: Path) -> None:
    latin = tmp_path / "items.jsonl"
    latin.write_bytes('{"id": "1", "question": "Zürich?", "answers": ["a"]}\n'.encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        load_dataset(latin)
    array = tmp_path / "array.jsonl"
    array.write_text(json.dumps([{"id": "1", "question": "Q?", "answers": ["a"]}]))
    with pytest.raises(DatasetError, match=r"expected JSON Lines .* found a JSON array"):
        load_dataset(array)


def test_supporting_ids_without_the_sibling_corpus_name_it(tmp_path: Path) -> None:
    row = {"id": "1", "question": "Q?", "answers": ["a"], "supporting_doc_ids": ["d1"]}
    with pytest.raises(DatasetError, match=r"no corpus\.jsonl beside it"):
        load_dataset(_jsonl(tmp_path / "items.jsonl", row))


def test_musique_paragraphs_of_strings_are_refused(tmp_path: Path) -> None:
    row = {"id": "2hop__1", "question": "Q?", "answer": "a", "paragraphs": ["France is a country."]}
    with pytest.raises(DatasetError, match="'paragraphs' must be a list of objects"):
        load_dataset(_jsonl(tmp_path / "musique.jsonl", row))


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["not an object"], "expected a question object, found str"),
        ([{"question": "Q?", "answer": "a", "supporting_facts": [5]}], "'supporting_facts' must be a list"),
    ],
)
def test_hotpotqa_bad_rows_are_refused(tmp_path: Path, rows: list, message: str) -> None:
    (tmp_path / "hotpotqa_train.json").write_text(json.dumps(rows))
    (tmp_path / "hotpotqa_train_corpus.json").write_text(json.dumps({"T": ["Text."]}))
    with pytest.raises(DatasetError, match=re.escape(message)):
        load_dataset(tmp_path)


def test_hotpotqa_folder_error_names_what_it_found(tmp_path: Path) -> None:
    (tmp_path / "questions.json").write_text("[]")
    with pytest.raises(DatasetError, match=r"one \*corpus\*\.json .* found questions\.json"):
        load_dataset(tmp_path)
