"""Request and response bodies of the research API (threads, messages, jobs, sources)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from deepscout.agent.options import Budgets, ResearchOptions
from deepscout.memory.tables import Message, ResearchJob, Thread


class ResearchRequest(BaseModel):
    """Ask a question: in a new thread, or as a follow-up in ``thread_id``."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000, pattern=r"\S")
    thread_id: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=200, description="A served model; default the first.")
    search: Literal["local", "web", "both"] = "local"
    max_steps: int = Field(default=2, ge=1, le=10, description="Search rounds.")


class JobOptions(BaseModel):
    """How a job researches, as stored with it (so a resumed job runs as it started)."""

    model: str
    search: Literal["local", "web", "both"]
    max_steps: int

    def research_options(self) -> ResearchOptions:
        return ResearchOptions(
            model=self.model, search=self.search, budgets=Budgets(max_steps=self.max_steps)
        )


class SourceCard(BaseModel):
    """A source of an answer as the page and the API show it: its number, title, URL and an excerpt."""

    n: int
    source_id: int
    title: str
    url: str | None
    excerpt: str


class ThreadCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str | None = Field(default=None, max_length=200)


class JobView(BaseModel):
    id: str
    thread_id: str
    question: str
    status: str
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    events_url: str

    @classmethod
    def of(cls, job: ResearchJob) -> JobView:
        return cls(
            id=job.id,
            thread_id=job.thread_id,
            question=job.question,
            status=job.status,
            error=job.error,
            created_at=job.created_at,
            finished_at=job.finished_at,
            events_url=f"/v1/research/{job.id}/events",
        )


class MessageView(BaseModel):
    id: int
    role: str
    content: str
    html: str | None = Field(description="Assistant messages: the answer as sanitised HTML, [n] linked.")
    sources: list[SourceCard]
    job_id: str | None
    created_at: datetime

    @classmethod
    def of(cls, message: Message, html: str | None) -> MessageView:
        return cls(
            id=message.id,
            role=message.role,
            content=message.content,
            html=html,
            sources=[SourceCard.model_validate(card) for card in message.meta.get("sources", [])],
            job_id=message.meta.get("job_id"),
            created_at=message.created_at,
        )


class ThreadView(BaseModel):
    id: str
    title: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, thread: Thread) -> ThreadView:
        return cls(
            id=thread.id, title=thread.title, created_at=thread.created_at, updated_at=thread.updated_at
        )


class ThreadDetail(ThreadView):
    messages: list[MessageView]
    jobs: list[JobView]


class SourceView(BaseModel):
    id: int
    kind: str
    title: str
    url: str | None
    text: str
