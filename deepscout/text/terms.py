"""Word terms and stopwords, for full-text queries (memory's corpus search) and for scoring passages and
checking answers against what was read (the agent).

Two stopword lists, the shorter inside the longer, each kept as it was measured:

- :data:`BASIC_STOPWORDS`: the question words and commonest function words. The agent's :func:`terms`
  drops these (passage relevance, the grounding checks of a small model's answers).
- :data:`STOPWORDS`: the basic list and the rest of a compact English function-word list (numbers and
  names are kept). The corpus drops these from search queries (recall measured on HotpotQA by
  benchmarks/corpus_retrieval.py).
"""

from __future__ import annotations

import re

WORD = re.compile(r"[^\W_]+", re.UNICODE)
"""A word: a run of letters and digits (everything else, underscores included, separates words)."""

_BASIC_STOPWORD_TEXT = """a an and are as at be by did do does for from has have he her his how in is it its
of on or she that the their them they this to was were what when where which who whom whose why will with"""
_MORE_STOPWORD_TEXT = """
about above after again against all am any because been before being below between both but can could
doing down during each few further had having here hers herself him himself i if into itself just me more
most my myself no nor not now off once only other our ours ourselves out over own same should so some such
than theirs themselves then there these those through too under until up very we while would you your
yours yourself yourselves
"""
BASIC_STOPWORDS = frozenset(_BASIC_STOPWORD_TEXT.split())
STOPWORDS = BASIC_STOPWORDS | frozenset(_MORE_STOPWORD_TEXT.split())


def terms(text: str) -> list[str]:
    """The content words of ``text``: lower-cased words of two characters or more, basic stopwords dropped
    (in order, repeats kept)."""
    return [w for w in (m.lower() for m in WORD.findall(text)) if w not in BASIC_STOPWORDS and len(w) > 1]
