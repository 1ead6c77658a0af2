from __future__ import annotations

import json
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
