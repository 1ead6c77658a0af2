"""`V4Tokenizer.encode_marked`: the ids of `encode`, and per character mark the tokens wholly before it."""

from __future__ import annotations

import pytest

from deepscout.model_runtime.v4.chat_format.tokenizer import BOS, USER, V4Tokenizer


def test_a_mark_at_a_token_boundary_counts_the_tokens_before_it(v4_tokenizer: V4Tokenizer) -> None:
    head = f"{BOS}Be brief — 日本語 ｜ ok."  # offsets are characters, not bytes
    text = f"{head}{USER}Hi there"
    ids, counts = v4_tokenizer.encode_marked(text, [len(head), 0])
    assert ids == v4_tokenizer.encode(text)
    assert counts == [len(v4_tokenizer.encode(head)), 0]
    assert ids[counts[0]] == v4_tokenizer.special.user


def test_a_mark_inside_a_token_counts_only_the_tokens_before_that_token(v4_tokenizer: V4Tokenizer) -> None:
    text = "doc one.\n\nRead this"  # ".\n\n" is one token
    ids, counts = v4_tokenizer.encode_marked(text, [len("doc one."), len("do")])
    assert ids == v4_tokenizer.encode(text)
    assert v4_tokenizer.decode(ids[: counts[0]]) == "doc one"
    assert counts[1] == 0


def test_a_mark_at_the_end_counts_every_token(v4_tokenizer: V4Tokenizer) -> None:
    text = "Ünïcödé text ends here"
    ids, counts = v4_tokenizer.encode_marked(text, [len(text), len(text)])
    assert ids == v4_tokenizer.encode(text) and counts == [len(ids), len(ids)]
    assert v4_tokenizer.encode_marked("", [0]) == ([], [0])


def test_a_mark_outside_the_text_is_refused(v4_tokenizer: V4Tokenizer) -> None:
    with pytest.raises(ValueError, match=r"character offsets in \[0, 3\]; got \[4, -1\]"):
        v4_tokenizer.encode_marked("abc", [1, 4, -1])
