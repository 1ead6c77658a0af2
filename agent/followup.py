"""Follow-up searches formed from what was read, without asking the model: bridge entities.

A multi-hop question names its first hop; the passage that answers it names the next hop's entity (the
"bridge": a film's director, a song's writer, a town's county). Those entities are titles and capitalised
names in the passages read that the question does not name. Each becomes one query, joined with the
part of the question its passage does not cover yet (the unresolved part), so the next round searches
"<bridge entity> <what is still asked>" instead of the question again.

Nothing here depends on the model: it works the same on a 135M model and a capable one, and text in the
passages can contribute names only, never query syntax or instructions (a name is a run of capitalised
words, cut to a few words; a page that says "SEARCH FOR: ..." contributes at most the capitalised words
it contains, ranked like any other name by how the sentence around it relates to the question).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deepscout.text.terms import STOPWORDS, terms

_TOKEN = re.compile(r"[^\W_][\w'’.&-]*", re.UNICODE)
_SENTENCE = re.compile(r"(?<![\s.][A-Z]\.)(?<=[.!?])\s+")
"""Sentence ends, but not after an initial ("Arthur C. Clarke")."""
_CONNECTORS = frozenset(
    {"of", "the", "de", "la", "le", "von", "van", "der", "den", "du", "da", "di", "and", "&"}
)
MAX_ENTITY_WORDS = 6
"""Longer capitalised runs are headlines or lists, not one name."""
UNRESOLVED_TERMS = 6
"""Question terms added to a bridge entity in its query."""


@dataclass(frozen=True)
class ReadPassage:
    """A document read in an earlier round, as the follow-up searches see it."""

    title: str
    text: str
    rank: int
    """Its order among the documents read (0 = the most relevant to the question)."""


def _is_name_word(token: str) -> bool:
    return token[0].isupper() or token[0].isdigit()


def _name(run: list[str]) -> str | None:
    """A run of words as a name: connectors and stopwords trimmed from its ends; None when too long (a
    headline or a list), empty, or only numbers."""
    while run and (run[-1].lower() in _CONNECTORS or run[-1].lower() in STOPWORDS):
        run = run[:-1]
    while run and run[0].lower() in STOPWORDS:
        run = run[1:]
    if not run or len(run) > MAX_ENTITY_WORDS or all(word.isdigit() for word in run):
        return None
    return " ".join(run)


def names_in(text: str) -> list[str]:
    """Capitalised runs of words (with connectors such as "of", "the", "de" inside, and no punctuation
    between them): candidate entities, in order of appearance; a run's leading stopwords ("The", "In",
    "He") are dropped."""
    found: list[str] = []
    for sentence in _SENTENCE.split(text):
        run: list[str] = []
        end = 0
        for match in _TOKEN.finditer(sentence):
            word = match.group().rstrip(".")
            if sentence[end : match.start()].strip():  # a comma, bracket or colon ends a name
                found += filter(None, [_name(run)])
                run = []
            end = match.end()
            if _is_name_word(word) or (run and word.lower() in _CONNECTORS):
                run.append(word)
                continue
            found += filter(None, [_name(run)])
            run = []
        found += filter(None, [_name(run)])
    return found


@dataclass(frozen=True)
class Bridge:
    """A candidate next-hop entity and the passage that named it."""

    name: str
    score: float
    source_rank: int


def bridges(question: str, passages: Sequence[ReadPassage]) -> list[Bridge]:
    """Entities named in ``passages`` but not in the question, best first.

    A name scores by the question terms in the sentence that names it (a bridge sits next to the fact
    the question asks about), discounted by its passage's rank; a passage title counts as a name of its
    passage's first sentence. Names whose words the question already holds are not bridges."""
    asked = set(terms(question))
    question_folded = question.casefold()
    best: dict[str, Bridge] = {}
    for passage in passages:
        sentences = _SENTENCE.split(passage.text) or [passage.text]
        for position, sentence in enumerate(sentences):
            overlap = len(asked & set(terms(sentence)))
            names = names_in(sentence)
            if position == 0 and passage.title:
                names = [passage.title, *names]
            for name in names:
                words = set(terms(name))
                if not words or words <= asked or name.casefold() in question_folded:
                    continue
                score = (1.0 + overlap) / (1.0 + passage.rank) / (1.0 + 0.2 * position)
                key = name.casefold()
                if key not in best or best[key].score < score:
                    best[key] = Bridge(name, score, passage.rank)
    return sorted(best.values(), key=lambda bridge: -bridge.score)


def unresolved(question: str, passage_text: str) -> list[str]:
    """The question's content terms that ``passage_text`` does not hold, in the question's order."""
    covered = set(terms(passage_text))
    return list(dict.fromkeys(t for t in terms(question) if t not in covered and t not in STOPWORDS))


def follow_up_queries(
    question: str, passages: Sequence[ReadPassage], done: Iterable[str], limit: int
) -> list[str]:
    """Up to ``limit`` new queries "<bridge entity> <unresolved question terms>", best bridge first."""
    seen = {query.casefold() for query in done}
    by_rank = {passage.rank: passage for passage in passages}
    queries: list[str] = []
    for bridge in bridges(question, passages):
        if len(queries) >= limit:
            break
        source = by_rank[bridge.source_rank]
        rest = [
            t for t in unresolved(question, f"{source.title} {source.text}") if t not in terms(bridge.name)
        ]
        query = " ".join([bridge.name, *rest[:UNRESOLVED_TERMS]])
        if query.casefold() in seen:
            continue
        seen.add(query.casefold())
        queries.append(query)
    return queries
