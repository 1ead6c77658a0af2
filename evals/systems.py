"""The two systems under test, answering the same items over the same corpus snapshot and model.

- :class:`AgentSystem`: the LangGraph research agent (any configuration).
- :class:`RagSystem`: a strong baseline, not a straw man — the same retriever the agent uses, the top-k
  documents placed whole into the prompt while they fit the same context budget as the agent's, one
  generation with the same model, citations resolved the same way.

Both record tool calls, prompt tokens, tokens actually computed (not reused from a cache), output tokens
and latency.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Protocol

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from deepscout.agent.api import research
from deepscout.agent.options import ResearchOptions
from deepscout.evals.datasets import EvalItem
from deepscout.evals.judge_prompts import RAG_SYSTEM, RAG_USER
from deepscout.evals.records import AnswerCost, SourceRef, SystemAnswer
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import Database
from deepscout.model_runtime.chat import ChatModel, GenerationDeadlineExceeded, usage_of
from deepscout.settings import Settings
from deepscout.text.citations import resolve_citations
from deepscout.tools.retrieval import Retriever
from deepscout.tools.untrusted import wrap_untrusted

PROMPT_OVERHEAD_TOKENS = 64
"""Tokens kept free for the chat template around the RAG prompt."""


class System(Protocol):
    name: str

    def answer(self, item: EvalItem) -> SystemAnswer: ...


@dataclass
class AgentSystem:
    """The research agent; each item runs in its own checkpoint thread, so an interrupted item resumes."""

    settings: Settings
    database: Database
    chat: ChatModel
    options: ResearchOptions
    run_id: str
    name: str = "agent"

    def thread_id(self, item: EvalItem) -> str:
        return f"eval-{self.run_id}-{hashlib.sha1(item.id.encode()).hexdigest()[:16]}"

    def answer(self, item: EvalItem) -> SystemAnswer:
        started = time.monotonic()
        result = research(
            item.question,
            settings=self.settings,
            options=self.options,
            model=self.chat,
            thread_id=self.thread_id(item),
            database=self.database,
        )
        usage = result.usage
        return SystemAnswer(
            item_id=item.id,
            system=self.name,
            answer=result.answer,
            sources=tuple(
                SourceRef(s["source_id"], s.get("doc_id"), s["title"], s["url"]) for s in result.sources
            ),
            # Evidence counts only the documents whose text was in the model's context when it answered.
            read_doc_ids=tuple(doc_id for s in result.sources if (doc_id := s.get("doc_id")) and s["chars"]),
            status=result.status,
            usage=AnswerCost(
                tool_calls=usage.tool_calls,
                prompt_tokens=usage.tokens.prompt_tokens,
                computed_tokens=usage.tokens.computed_tokens,
                output_tokens=usage.tokens.output_tokens,
                # A resumed run reports the time of its earlier invocations too.
                latency_s=round(max(time.monotonic() - started, usage.seconds), 3),
            ),
        )


def _usage_of(message: BaseMessage, prompt_tokens: int) -> tuple[int, int, int]:
    """(prompt, computed, output) tokens of one generation: the backend's counters, or, from a backend
    without any, the ``prompt_tokens`` counted here, all of them computed."""
    usage = usage_of(message)
    if not usage.prompt_tokens:
        return prompt_tokens, prompt_tokens, usage.output_tokens
    return usage.prompt_tokens, usage.computed_tokens, usage.output_tokens


@dataclass
class RagSystem:
    """Retrieve once, read the top-k documents whole while they fit, answer once."""

    chat: ChatModel
    corpus: CorpusIndex
    retriever: Retriever
    collection: str | None
    top_k: int
    context_tokens: int
    answer_max_tokens: int
    wall_time_s: float
    name: str = "rag"

    def _prompt(self, question: str, passages: list[str]) -> list[BaseMessage]:
        """The prompt with each passage ``[n]`` and its text (title included) wrapped as untrusted data."""
        blocks = [
            f"[{n}]\n{wrap_untrusted(text, origin='corpus')}" for n, text in enumerate(passages, start=1)
        ]
        return [
            SystemMessage(RAG_SYSTEM),
            HumanMessage(RAG_USER.format(passages="\n\n".join(blocks), question=question)),
        ]

    def _fit(self, question: str, texts: list[str]) -> list[str]:
        """Passages (``title\\ntext``) whole while they fit the budget; the first that does not fit is cut
        to the room left, and the rest are left out."""
        budget = self.context_tokens - self.answer_max_tokens - PROMPT_OVERHEAD_TOKENS
        passages: list[str] = []
        for text in texts:
            if self.chat.count_tokens(self._prompt(question, [*passages, text])) <= budget:
                passages.append(text)
                continue
            low, high = 0, len(text)
            while low < high:  # the longest prefix that fits
                mid = (low + high + 1) // 2
                if self.chat.count_tokens(self._prompt(question, [*passages, text[:mid]])) <= budget:
                    low = mid
                else:
                    high = mid - 1
            if low > 40:
                passages.append(text[:low])
            break
        return passages

    def answer(self, item: EvalItem) -> SystemAnswer:
        started = time.monotonic()
        hits = self.retriever.search(item.question, k=self.top_k, collection=self.collection)
        sources = [self.corpus.get(hit.source_id) for hit in hits]
        passages = self._fit(item.question, [f"{s.title}\n{s.text}" for s in sources])
        used = sources[: len(passages)]
        messages = self._prompt(item.question, passages)
        prompt_tokens = self.chat.count_tokens(messages)
        error = None
        try:
            message = self.chat.invoke(
                messages, deadline=started + self.wall_time_s, max_new_tokens=self.answer_max_tokens
            )
            text = message.content if isinstance(message.content, str) else str(message.content)
            prompt, computed, output = _usage_of(message, prompt_tokens)
        except GenerationDeadlineExceeded as exc:
            text, error = "", f"wall-time budget ran out: {exc}"
            prompt, computed, output = prompt_tokens, prompt_tokens, 0
        resolved = resolve_citations(text.strip(), range(1, len(used) + 1))
        return SystemAnswer(
            item_id=item.id,
            system=self.name,
            answer=resolved.text,
            sources=tuple(SourceRef(s.id, s.doc_id, s.title, s.url) for s in used),
            read_doc_ids=tuple(s.doc_id for s in used if s.doc_id),
            usage=AnswerCost(
                tool_calls=1,
                prompt_tokens=prompt,
                computed_tokens=computed,
                output_tokens=output,
                latency_s=round(time.monotonic() - started, 3),
            ),
            error=error,
        )
