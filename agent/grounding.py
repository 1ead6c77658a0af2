"""Checks that keep a small model's output tied to the question and the documents read.

A small model (SmolLM2-135M) copies the worked example into its queries and answers, echoes the question
as its answer, or writes an answer from nowhere. These checks catch that: queries lose the example's
entities the run never met, an ungrounded answer is replaced by the sentences read that best answer the
question (cited), and the same sentences stand in when the model gives no answer at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from langchain_core.messages import BaseMessage

from deepscout.agent import prompts
from deepscout.agent.context import bm25_scores, documents_in, split_passages
from deepscout.agent.state import ResearchState
from deepscout.text.terms import terms

_EXAMPLE_TERMS = frozenset(terms(" ".join(prompts.EXAMPLE_ENTITIES)))
"""The worked example's named entities (a reply naming them, unprompted, copied the example)."""

_META_TERMS = frozenset(
    terms("answer question source document passage text according based provided given found information")
)
"""Words about the task rather than the world: an answer made of these and the question's words says nothing
(measured on SmolLM2 over the demo corpus: 'The answer to the question "Who directed …?" is [1].')."""

_SCHEMA_TERMS = frozenset(
    terms(
        "type string array object items properties description query queries next_queries maxLength "
        "minLength pattern required schema json null true false"
    )
)
"""The words of a JSON schema: a query made only of these copied the structured-output instruction."""

_CITATION = re.compile(r"\[\d+\]")


def vocabulary(state: ResearchState, transcript: Sequence[BaseMessage]) -> set[str]:
    """Terms of the question and of the documents read."""
    words = set(terms(state["question"]))
    for _, doc in documents_in(transcript):
        words.update(terms(doc.title))
        words.update(terms(doc.text))
    return words


def copies_example(query: str, known: set[str]) -> bool:
    """Whether ``query`` names one of the worked example's entities that the question and documents
    (``known``) do not name.

    SmolLM2 often carries them into its own queries ("The Four Seasons is both a destination and a
    airport in the same state"); what is left of such a query once the entity is cut ("composer") is
    the example's too, so the whole query goes."""
    folded = query.casefold()
    return any(
        entity.casefold() in folded and not set(terms(entity)) & known for entity in prompts.EXAMPLE_ENTITIES
    )


def clean_queries(
    queries: Sequence[str], done: Sequence[str], limit: int, known: set[str] | None = None
) -> list[str]:
    """Queries normalised and new; given the run's vocabulary ``known``, those copied from the worked
    example or made only of the words of a JSON schema ("type string", "description") are dropped."""
    seen = {q.casefold() for q in done}
    cleaned: list[str] = []
    for query in queries:
        text = " ".join(query.split()).strip(" \"'")
        words = set(terms(text))
        if not words:  # punctuation or stopwords only, e.g. a stray "]}"
            continue
        if known is not None and (copies_example(text, known) or words <= _SCHEMA_TERMS - known):
            continue
        if text.casefold() not in seen:
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


_SENTENCE = re.compile(r"(?<![\s.][A-Z]\.)(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
"""A sentence ends at . ! or ? before a capital, but not after an initial ("Arthur C. Clarke")."""
FALLBACK_SENTENCES = 2


def fallback_answer(state: ResearchState, reason: str, limit: int = FALLBACK_SENTENCES) -> str:
    """The one or two sentences of the sources read that best answer the question, each cited, when the
    model gave no grounded answer (``reason`` is used only when nothing was read).

    Sentences rank by BM25 against the question's terms; a sentence made only of the question's words
    cannot hold its answer and ranks last; a second sentence is added only when it holds question terms
    the first lacks (the other hop of a multi-hop question)."""
    transcript = state.get("transcript", [])
    pool = [
        (doc.n, sentence.strip())
        for _, doc in documents_in(transcript)
        for passage in split_passages(doc.text)
        for sentence in _SENTENCE.split(passage)
        if terms(sentence)
    ]
    if not pool:
        return f"No answer: {reason}."
    asked = terms(state["question"])
    scores = bm25_scores([sentence for _, sentence in pool], asked)
    novel = [bool(set(terms(sentence)) - set(asked)) for _, sentence in pool]
    order = sorted(range(len(pool)), key=lambda i: (not novel[i], -scores[i], i))
    best = order[:1]
    covered = set(terms(pool[best[0]][1])) & set(asked)
    for i in order[1:]:
        if len(best) >= limit:
            break
        if set(terms(pool[i][1])) & set(asked) - covered:  # a second sentence must add to the first
            best.append(i)
            covered |= set(terms(pool[i][1]))
    return " ".join(f"{pool[i][1]} [{pool[i][0]}]" for i in sorted(best, key=lambda i: (pool[i][0], i)))
