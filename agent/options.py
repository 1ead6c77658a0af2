"""Typed options of one research run: budgets, search mode and model choice.

Created by the entry point (CLI, API, evals) and passed down as ``research(..., options=...)``; nothing
here reads the environment at import.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from deepscout.errors import DeepscoutError
from deepscout.tools.registry import SearchMode
from deepscout.tools.retrieval import RetrievalKind


class ResearchInputError(DeepscoutError, ValueError):
    """The question or the run's options are unusable; the message says what to change."""


class Budgets(BaseModel):
    """What one run may spend. The loop stops at the first budget reached and answers from what it has."""

    model_config = ConfigDict(extra="forbid")

    max_steps: int = Field(default=3, ge=1, le=50, description="Search rounds (act → read → reflect).")
    max_documents: int = Field(default=10, ge=1, le=200, description="Documents read (whole or in part).")
    max_tool_calls: int = Field(
        default=24,
        ge=1,
        le=1000,
        description="Tool calls (searches and reads): the default covers max_documents reads and the "
        "searches of three rounds (the question and the model's queries, then the follow-ups).",
    )
    max_context_tokens: int | None = Field(
        default=None,
        ge=512,
        description="Prompt + answer tokens; None means the model's whole context window.",
    )
    wall_time_s: float = Field(
        default=300.0,
        gt=0,
        description="Wall time of the run; stops a prefill or decode in progress when it runs out.",
    )

    def context_tokens(self, window: int) -> int:
        """The run's context budget for a model of ``window`` tokens: ``max_context_tokens``, which the
        model must hold (else ResearchInputError), or the whole window."""
        wanted = self.max_context_tokens
        if wanted is not None and wanted > window:
            raise ResearchInputError(
                f"max_context_tokens is {wanted} but the model's context window holds {window} tokens; "
                f"ask for at most {window}, or leave it unset to use the whole window"
            )
        return wanted or window


class ResearchOptions(BaseModel):
    """How the agent researches: which model, which tools, how much it reads and writes per step."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, description="Chat model spec (see model_runtime.chat); None: ``Settings.model``."
    )
    search: SearchMode = Field(default="local", description="local corpus, web, or both.")
    budgets: Budgets = Field(default_factory=Budgets)
    collection: str | None = Field(default=None, description="Restrict corpus search to one collection.")
    retrieval: RetrievalKind = Field(default="bm25", description="Corpus ranking: bm25, dense or hybrid.")
    queries_per_step: int = Field(
        default=3, ge=0, le=8, description="Most queries the model may propose per round (0: none asked)."
    )
    follow_ups_per_step: int = Field(
        default=4, ge=0, le=8, description="Bridge-entity queries formed per round from what was read."
    )
    hits_per_query: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Results kept from each search; the first round reads the question's top results "
        "(as many as the RAG baseline's top-k).",
    )
    reads_per_step: int = Field(
        default=5, ge=1, le=20, description="Most documents read in a round after the first."
    )
    read_chars: int = Field(
        default=60_000, ge=500, description="Characters asked of read_document per document."
    )
    plan_max_tokens: int = Field(default=96, ge=16, description="Tokens the planner may write.")
    reflect_max_tokens: int = Field(default=96, ge=16, description="Tokens the reflection may write.")
    answer_max_tokens: int = Field(default=256, ge=16, description="Tokens the answer may write.")
    answer_time_share: float = Field(
        default=0.3,
        ge=0.0,
        lt=1.0,
        description="Share of the wall time kept for the answer; the loop stops early to leave it.",
    )
    min_grounding: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Least share of the answer's words found in the question and documents read; "
        "a less grounded answer is replaced by the most relevant passages (0 disables the check).",
    )
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="Sampling temperature (0: greedy).")
