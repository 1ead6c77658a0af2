"""Bad corpus input is refused before anything is stored, naming the file and the line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from deepscout.memory.ingest import CorpusFormatError, open_input


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        ('{"id": 1, "text": "ok"}\n{"id": 2, "text": \n', 2, "invalid JSON"),
        ('{"id": 1, "text": "ok"}\n\n[1, 2]\n', 3, "expected a JSON object"),
        ('{"id": 1, "title": "no text"}\n', 1, "missing required field(s): text"),
        ('{"text": "no id"}\n', 1, "missing required field(s): id"),
        ('{"id": 1, "text": 5}\n', 1, "'text' must be a string"),
        ('{"id": 1, "text": "t", "url": 3}\n', 1, "'url' must be a string"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path: Path, content: str, line: int, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(CorpusFormatError) as caught:
        open_input(path)
    assert caught.value.line == line and caught.value.path == path
    assert str(caught.value).startswith(f"{path}:{line}: ") and problem in str(caught.value)


def test_non_utf8_jsonl_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"id": 1, "text": "ok"}\n{"id": 2, "text": "caf\xe9"}\n')
    with pytest.raises(CorpusFormatError, match=r"latin1\.jsonl:2: not UTF-8"):
        open_input(path)


def test_broken_hotpotqa_json(tmp_path: Path) -> None:
    path = tmp_path / "corpus.json"
    path.write_text('{\n  "A": ["one."],\n  "B": ["two." \n}', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match=r"corpus\.json:4: invalid JSON"):
        open_input(path)
    path.write_text('{"A": "not a list"}', encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="'A' must be a list of sentence strings"):
        open_input(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="expected a HotpotQA corpus"):
        open_input(path)


def test_text_folder_problems(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    with pytest.raises(CorpusFormatError, match="folder holds no"):
        open_input(folder)
    (folder / "good.md").write_text("# Good\n", encoding="utf-8")
    (folder / "bad.txt").write_bytes(b"line one\nline \xff two\n")
    with pytest.raises(CorpusFormatError, match=r"bad\.txt:2: not UTF-8"):
        open_input(folder)


def test_missing_unknown_and_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(CorpusFormatError, match="no such file or folder"):
        open_input(tmp_path / "absent.jsonl")
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="unknown corpus format"):
        open_input(csv)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(CorpusFormatError, match="holds no documents"):
        open_input(empty)
    if os.geteuid() != 0:  # root reads files whatever their mode
        locked = tmp_path / "locked.jsonl"
        locked.write_text('{"id": 1, "text": "x"}\n', encoding="utf-8")
        locked.chmod(0)
        with pytest.raises(CorpusFormatError, match="cannot read file"):
            open_input(locked)
    folder_named_like_a_file = tmp_path / "dir.jsonl"
    folder_named_like_a_file.mkdir()
    with pytest.raises(CorpusFormatError, match="folder holds no"):
        open_input(folder_named_like_a_file)
