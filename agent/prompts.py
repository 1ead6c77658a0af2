"""Prompt strings of the research agent (text only; no logic).

The system prompt is the same for every step of every run, so an embedded backend reuses its KV cache
across steps and runs. Each step appends its instruction as a new user turn (append-only prompts).
Few-shot examples show the tiny default model what good queries, reflections and cited answers look like.
"""

from __future__ import annotations

from deepscout.tools.untrusted import UNTRUSTED_RULE

SYSTEM_PROMPT = f"""You are a careful research assistant. You answer questions from documents \
that you find with a search engine, and you cite the documents you use as [n].
{UNTRUSTED_RULE}

Example.
Question: Which river flows through the birthplace of the author of Dracula?
Search queries: {{"queries":["Dracula author","Bram Stoker birthplace"]}}
Documents:
[1] Dracula: Dracula is an 1897 novel by Bram Stoker.
[2] Bram Stoker: Bram Stoker was born in Clontarf, Dublin.
Enough? {{"enough":false,"next_queries":["river Dublin"]}}
[3] River Liffey: The Liffey flows through the centre of Dublin.
Enough? {{"enough":true,"next_queries":[]}}
Answer: Dracula was written by Bram Stoker [1], who was born in Dublin [2]; the River Liffey flows \
through Dublin [3]."""

QUESTION = "Question: {question}"

PLAN_INSTRUCTION = """Write up to {n} short keyword search queries for the question, one fact per \
query, naming the entity and the fact you need. Do not copy the whole question."""

DOCUMENTS_HEADER = "Documents found (round {step}):"

NO_DOCUMENTS = "Round {step}: the searches found no new documents."

REFLECT_INSTRUCTION = """Do the documents above answer the question "{question}"? If yes, reply \
enough=true. If not, reply enough=false and write up to {n} new short keyword queries for the \
missing facts (not queries already used: {used})."""

ANSWER_INSTRUCTION = """Answer the question "{question}" in one to three sentences, using only the \
documents above. Put the number of the document you use after each fact, like [1]. If the documents \
do not say, answer that they do not say."""

FALLBACK_ANSWER = """The model did not produce an answer ({reason}). The most relevant passages found:
{passages}"""
