"""The run context: what the graph's nodes use beyond the checkpointed state (model, tools, context
manager, deadlines, database, event sink). It travels as LangGraph's runtime context, never in the state,
so nothing here is checkpointed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.tools import BaseTool
from sqlalchemy.orm import Session, sessionmaker

from deepscout.agent.context import ContextManager
from deepscout.agent.options import ResearchOptions
from deepscout.model_runtime.chat import ChatModel
from deepscout.tools.base import ToolContext

Event = dict[str, Any]
"""A progress event: ``{"type": "queries" | "search" | "source" | ..., ...}`` (see docs/architecture.md)."""


@dataclass
class RunContext:
    """Run-scoped, non-checkpointed things the nodes use."""

    model: ChatModel
    tools: list[BaseTool]
    tool_context: ToolContext
    options: ResearchOptions
    context: ContextManager
    session_factory: sessionmaker[Session]
    deadline: float
    """``time.monotonic()`` when the wall-time budget ends (the answer's deadline)."""
    loop_deadline: float
    """When the search loop stops, leaving the rest of the wall time to the answer."""
    emit: Callable[[Event], None] = field(default=lambda event: None)
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set to stop the run: model calls end with ``GenerationCancelled``."""
