"""The context manager: what the model sees, within a token budget counted by the model's own tokenizer.

Documents enter the transcript whole while they fit, each as its own user turn appended at the end
(append-only, so an embedded backend prefills only the new tokens). When a document does not fit whole,
the manager pools the passages of every document in the context and keeps the most relevant ones
(BM25 against the question and the queries) that fit, rebuilding the document turns in place; what it
drops is recorded. Rebuilding changes earlier turns, so the backend re-prefills from the first change.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from langchain_core.messages import BaseMessage, HumanMessage

from deepscout.agent.state import DroppedRecord, ResearchState
from deepscout.errors import DeepscoutError
from deepscout.text.terms import terms
from deepscout.tools.untrusted import wrap_untrusted

if TYPE_CHECKING:
    from deepscout.model_runtime.chat import ChatModel

DOC_KEY = "deepscout_document"
"""``additional_kwargs`` key marking a document turn: {n, source_id, title, url, text}."""
GAP = "\n\n"
"""Kept passages of one document are joined by a blank line, so they split back the same way."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
PASSAGE_CHARS = 600
"""Long paragraphs are cut into sentence groups of about this many characters."""


class ContextBudgetError(DeepscoutError, RuntimeError):
    """The fixed part of the prompt (system prompt, question, instructions) alone exceeds the budget."""


@dataclass
class DocumentText:
    """A document to place in the context, numbered ``n`` for citation."""

    n: int
    source_id: int
    title: str
    url: str | None
    text: str
    doc_id: str | None = None
    """The corpus document's id (None for a web page); not kept in the transcript."""


@dataclass
class Placement:
    """The outcome of placing documents: the new transcript, characters kept per document, drops."""

    transcript: list[BaseMessage]
    kept_chars: dict[int, int] = field(default_factory=dict)
    """Characters of each document (by ``n``) now in the context."""
    dropped: list[DroppedRecord] = field(default_factory=list)
    rebuilt: bool = False
    """True when earlier turns were rewritten (the prompt is no longer append-only)."""


def focus_text(state: ResearchState) -> str:
    """What passages are ranked against: the question and the queries searched or about to be."""
    return " ".join([state["question"], *state.get("queries_done", []), *state.get("pending_queries", [])])


def split_passages(text: str) -> list[str]:
    """Paragraphs, with long ones cut into groups of sentences of about PASSAGE_CHARS characters."""
    passages: list[str] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        if len(paragraph) <= PASSAGE_CHARS:
            passages.append(paragraph)
            continue
        group = ""
        for sentence in _SENTENCE_END.split(paragraph):
            if group and len(group) + len(sentence) > PASSAGE_CHARS:
                passages.append(group)
                group = ""
            group = f"{group} {sentence}".strip()
        if group:
            passages.append(group)
    return passages


def bm25_scores(
    passages: Sequence[str], focus: Iterable[str], k1: float = 1.2, b: float = 0.75
) -> list[float]:
    """BM25 of each passage against the focus terms, with statistics from the passages themselves."""
    query = set(focus)
    tokenised = [terms(p) for p in passages]
    if not tokenised:
        return []
    average = sum(len(t) for t in tokenised) / len(tokenised) or 1.0
    frequency: Counter[str] = Counter()
    for tokens in tokenised:
        frequency.update(set(tokens) & query)
    scores = []
    for tokens in tokenised:
        counts = Counter(tokens)
        score = 0.0
        for term in query:
            tf = counts.get(term, 0)
            if not tf:
                continue
            idf = math.log(1 + (len(tokenised) - frequency[term] + 0.5) / (frequency[term] + 0.5))
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(tokens) / average))
        scores.append(score)
    return scores


def document_message(
    doc: DocumentText, text: str | None = None, *, origin: str = "read_document"
) -> HumanMessage:
    """The user turn holding (part of) a document, labelled ``[n]`` for citation. The title comes from the
    document as much as its text does, so both sit inside the untrusted-data block."""
    shown = doc.text if text is None else text
    body = shown or "(left out: the context budget is full)"
    meta: dict[str, Any] = {"n": doc.n, "source_id": doc.source_id, "title": doc.title, "url": doc.url}
    wrapped = wrap_untrusted(f"{doc.title}\n{body}", origin=origin)
    return HumanMessage(content=f"[{doc.n}]\n{wrapped}", additional_kwargs={DOC_KEY: {**meta, "text": shown}})


def documents_in(transcript: Sequence[BaseMessage]) -> list[tuple[int, DocumentText]]:
    """The document turns of a transcript: (index in the transcript, the document as shown)."""
    found = []
    for index, message in enumerate(transcript):
        meta = message.additional_kwargs.get(DOC_KEY)
        if meta:
            found.append(
                (index, DocumentText(meta["n"], meta["source_id"], meta["title"], meta["url"], meta["text"]))
            )
    return found


class ContextManager:
    """Fits documents into ``limit_tokens`` minus ``reserve_tokens`` (kept for instructions and outputs)."""

    def __init__(self, model: ChatModel, *, limit_tokens: int, reserve_tokens: int) -> None:
        self.model = model
        self.limit_tokens = limit_tokens
        self.reserve_tokens = reserve_tokens
        self._empty_turn = model.count_tokens([HumanMessage(content="")])

    @property
    def available(self) -> int:
        return self.limit_tokens - self.reserve_tokens

    def count(self, messages: Sequence[BaseMessage]) -> int:
        return self.model.count_tokens(list(messages))

    def add_documents(
        self, transcript: Sequence[BaseMessage], docs: Sequence[DocumentText], focus: str
    ) -> Placement:
        """Append ``docs`` whole while they fit; otherwise re-select passages over all documents."""
        placed = list(transcript)
        kept: dict[int, int] = {}
        for position, doc in enumerate(docs):
            candidate = [*placed, document_message(doc)]
            if self.count(candidate) <= self.available:
                placed = candidate
                kept[doc.n] = len(doc.text)
                continue
            placement = self._reselect(placed, docs[position:], focus, self.available)
            placement.kept_chars = {**kept, **placement.kept_chars}
            return placement
        return Placement(transcript=placed, kept_chars=kept)

    def shrink_to(
        self, transcript: Sequence[BaseMessage], extra: Sequence[BaseMessage], new_tokens: int, focus: str
    ) -> Placement:
        """Make ``transcript + extra`` leave room for ``new_tokens`` output, dropping passages if needed."""
        budget = self.limit_tokens - new_tokens - (self.count([*transcript, *extra]) - self.count(transcript))
        if self.count(transcript) <= budget:
            return Placement(transcript=list(transcript))
        return self._reselect(list(transcript), [], focus, budget)

    def _passage_tokens(self, passage: str) -> int:
        return max(1, self.model.count_tokens([HumanMessage(content=passage)]) - self._empty_turn)

    def _reselect(
        self, transcript: list[BaseMessage], new_docs: Sequence[DocumentText], focus: str, budget: int
    ) -> Placement:
        existing = documents_in(transcript)
        docs = [doc for _, doc in existing] + list(new_docs)
        fixed = [m for m in transcript if DOC_KEY not in m.additional_kwargs]
        # Every document keeps its labelled turn (possibly empty) so citations stay numbered.
        skeleton = [document_message(doc, "") for doc in docs]
        room = budget - self.count([*fixed, *skeleton])
        if room < 0:
            raise ContextBudgetError(
                f"the prompt without documents takes {self.count([*fixed, *skeleton])} tokens; the budget "
                f"is {budget}. Raise max_context_tokens or use a model with a larger context window."
            )
        pool: list[tuple[int, int, str]] = []  # (doc position, passage position, text)
        for d, doc in enumerate(docs):
            pool.extend((d, p, text) for p, text in enumerate(split_passages(doc.text)))
        scores = bm25_scores([text for _, _, text in pool], terms(focus))
        # The lead passage names the entity: a small bonus so it survives ties.
        order = sorted(range(len(pool)), key=lambda i: (-(scores[i] + (0.1 if pool[i][1] == 0 else 0.0)), i))
        chosen: set[int] = set()
        used = 0
        for i in order:
            cost = self._passage_tokens(pool[i][2]) + 2
            if used + cost <= room:
                chosen.add(i)
                used += cost
        while True:
            rebuilt = self._rebuild(transcript, docs, pool, chosen, len(existing))
            if self.count(rebuilt.transcript) <= budget or not chosen:
                return rebuilt
            chosen.discard(max(chosen, key=lambda i: (-scores[i], i)))

    def _rebuild(
        self,
        transcript: list[BaseMessage],
        docs: list[DocumentText],
        pool: list[tuple[int, int, str]],
        chosen: set[int],
        existing_count: int,
    ) -> Placement:
        kept_text: dict[int, list[str]] = {d: [] for d in range(len(docs))}
        dropped_count: Counter[int] = Counter()
        dropped_chars: Counter[int] = Counter()
        for i, (d, _, text) in enumerate(pool):
            if i in chosen:
                kept_text[d].append(text)
            else:
                dropped_count[d] += 1
                dropped_chars[d] += len(text)
        messages = {d: document_message(doc, GAP.join(kept_text[d])) for d, doc in enumerate(docs)}
        result: list[BaseMessage] = []
        d = 0
        rebuilt = False
        for message in transcript:
            if DOC_KEY in message.additional_kwargs:
                replacement = messages[d]
                rebuilt = rebuilt or replacement.content != message.content
                result.append(replacement)
                d += 1
            else:
                result.append(message)
        result.extend(messages[k] for k in range(existing_count, len(docs)))
        dropped: list[DroppedRecord] = [
            {
                "n": docs[k].n,
                "source_id": docs[k].source_id,
                "passages_dropped": dropped_count[k],
                "chars_dropped": dropped_chars[k],
                "reason": "context budget: kept the passages most relevant to the question",
            }
            for k in sorted(dropped_count)
        ]
        kept = {docs[k].n: len(GAP.join(kept_text[k])) for k in range(len(docs))}
        return Placement(transcript=result, kept_chars=kept, dropped=dropped, rebuilt=rebuilt)
