"""Checks that keep a small model's output tied to the question and the documents read.

A small model (SmolLM2-135M) copies the worked example into its queries and answers, echoes the question
as its answer, or writes an answer from nowhere. These checks catch that: queries lose the example's
entities the run never met, an ungrounded answer is replaced by the most relevant passages read (cited),
and the same passages stand in when the model gives no answer at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage

from deepscout.agent import prompts
from deepscout.agent.context import bm25_scores, documents_in, focus_text, split_passages
from deepscout.agent.state import ResearchState
from deepscout.text.terms import terms

_EXAMPLE_TERMS = frozenset(terms(" ".join(prompts.EXAMPLE_ENTITIES)))
"""The worked example's named entities (a reply naming them, unprompted, copied the example)."""

_META_TERMS = frozenset(
    terms("answer question source document passage text according based provided given found information")
)
"""Words about the task rather than the world: an answer made of these and the question's words says nothing
(measured on SmolLM2 over the demo corpus: 'The answer to the question "Who directed …?" is [1].')."""

_CITATION = re.compile(r"\[\d+\]")


def vocabulary(state: ResearchState, transcript: Sequence[BaseMessage]) -> set[str]:
    """Terms of the question and of the documents read."""
    words = set(terms(state["question"]))
    for _, doc in documents_in(transcript):
        words.update(terms(doc.title))
        words.update(terms(doc.text))
    return words


def without_example(query: str, known: set[str]) -> str:
    """``query`` without the worked example's entities that the question and documents (``known``) do not
    name.

    SmolLM2 often carries them into its own queries ("The Four Seasons is both a destination and a
    airport in the same state"), and full-text search then reads unrelated documents ("season")."""
    for entity in prompts.EXAMPLE_ENTITIES:
        if not set(terms(entity)) & known:
            query = re.sub(re.escape(entity), " ", query, flags=re.IGNORECASE)
    return " ".join(query.split())


def clean_queries(
    queries: Sequence[str], done: Sequence[str], limit: int, known: set[str] | None = None
) -> list[str]:
    """Queries normalised, new, and (given the run's vocabulary ``known``) rid of what was copied from the
    worked example."""
    seen = {q.casefold() for q in done}
    cleaned: list[str] = []
    for query in queries:
        text = " ".join(query.split()).strip(" \"'")
        if known is not None:
            text = without_example(text, known)
        if not terms(text):  # punctuation or stopwords only, e.g. a stray "]}"
            continue
        if text and text.casefold() not in seen:
            seen.add(text.casefold())
            cleaned.append(text)
    return cleaned[:limit]


def ungrounded(
    text: str, state: ResearchState, transcript: Sequence[BaseMessage], min_share: float
) -> str | None:
    """Why the answer is not grounded in what was read, or None when it is.

    A small model sometimes writes the worked example's answer again (measured on SmolLM2 over HotpotQA:
    "The Four Seasons was directed by Antonio Vivaldi."), or an answer from nowhere."""
    words = set(terms(_CITATION.sub(" ", text)))
    if not words:
        return None
    known = vocabulary(state, transcript)
    if words & _EXAMPLE_TERMS - known:
        return "its answer repeated the worked example"
    if words - _META_TERMS <= set(terms(state["question"])):
        return "its answer only repeated the question"
    if len(words & known) / len(words) < min_share:
        return "its answer used too few words of the question and the documents read"
    return None


def fallback_answer(state: ResearchState, reason: str, limit: int = 3) -> str:
    """The most relevant passages of the sources read, each cited, when the model gave no answer."""
    transcript = state.get("transcript", [])
    pool = [(doc.n, passage) for _, doc in documents_in(transcript) for passage in split_passages(doc.text)]
    if not pool:
        return f"No answer: {reason}."
    scores = bm25_scores([p for _, p in pool], terms(focus_text(state)))
    best = sorted(range(len(pool)), key=lambda i: -scores[i])[:limit]
    passages = "\n".join(f"- {pool[i][1][:400]} [{pool[i][0]}]" for i in sorted(best))
    return prompts.FALLBACK_ANSWER.format(reason=reason, passages=passages)
