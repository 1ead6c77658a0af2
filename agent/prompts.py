"""Prompt strings of the research agent (text only; no logic).

Every transcript starts with the same system prompt and the same worked example (as real chat turns),
so an embedded backend reuses its KV cache across steps and runs; each step then appends its
instruction as a new user turn (append-only prompts). The worked example shows the tiny default model
the exact reply formats of the plan and the reflections. It holds no example answer: with one,
SmolLM2-135M wrote that answer again for 4 of 5 HotpotQA questions ("The Four Seasons was directed by
Antonio Vivaldi.").
"""

from __future__ import annotations

from deepscout.tools.untrusted import UNTRUSTED_RULE

SYSTEM_PROMPT = f"""You are a careful research assistant. You answer questions from documents that \
you find with a search engine, and you cite the documents you use as [n].
{UNTRUSTED_RULE}"""

QUESTION = "Question: {question}"

PLAN_INSTRUCTION = """Write up to {n} short keyword search queries for the question, one fact per \
query. Reply in JSON: {{"queries":["...","..."]}}"""

REFLECT_INSTRUCTION = """Which facts does the question "{question}" still need? Reply in JSON: \
{{"next_queries":["..."]}} with up to {n} new short keyword queries for the missing facts, or \
{{"next_queries":[]}} if none are missing."""

ANSWER_INSTRUCTION = """Answer the question "{question}" in one to three plain sentences (not JSON), \
using only the documents of this question. Put the number of the document after each fact, like [1]."""

NO_DOCUMENTS = "Round {step}: the searches found no new documents."

NEXT_QUESTION = "That was an example. Now a new question; its documents are numbered from [1] again."

_EXAMPLE_QUESTION = "Which sea lies by the birthplace of the composer of The Four Seasons?"

_EXAMPLE_DOCUMENT = """[{n}]
<untrusted_data origin="read_document">
{title}
{text}
</untrusted_data>"""

EXAMPLE_TURNS: tuple[tuple[str, str], ...] = (
    ("user", QUESTION.format(question=_EXAMPLE_QUESTION)),
    ("user", PLAN_INSTRUCTION.format(n=3)),
    ("assistant", '{"queries":["The Four Seasons composer","Antonio Vivaldi birthplace"]}'),
    ("user", _EXAMPLE_DOCUMENT.format(n=1, title="The Four Seasons", text="The Four Seasons is by Vivaldi.")),
    ("user", _EXAMPLE_DOCUMENT.format(n=2, title="Antonio Vivaldi", text="Vivaldi was born in Venice.")),
    ("user", REFLECT_INSTRUCTION.format(question=_EXAMPLE_QUESTION, n=3)),
    ("assistant", '{"next_queries":["Venice sea"]}'),
    ("user", _EXAMPLE_DOCUMENT.format(n=3, title="Venice", text="Venice lies on the Adriatic Sea.")),
    ("user", REFLECT_INSTRUCTION.format(question=_EXAMPLE_QUESTION, n=3)),
    ("assistant", '{"next_queries":[]}'),
    ("user", NEXT_QUESTION),
)

EXAMPLE_ENTITIES = ("Four Seasons", "Antonio Vivaldi", "Venice", "Adriatic")
"""The example's named entities: a query or answer naming them unprompted copied the example."""

FALLBACK_NOTE = (
    "The model gave no grounded answer ({reason}); the sentences below are quoted from the sources."
)
"""Shown beside a fallback answer (never part of its text, so scoring sees only the quoted sentences)."""
