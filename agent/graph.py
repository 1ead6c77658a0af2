"""The research graph's wiring: plan → act → read → reflect → (act | answer).

Routing lives in the nodes (each returns a ``Command`` naming the next node), so the edges here are only
the entry point. The loop's nodes are in :mod:`.nodes`, the answer in :mod:`.answer_node`. ``builder`` is
the uncompiled graph; :func:`build_graph` compiles it with a checkpointer so that an interrupted run
resumes by thread id.
"""

from __future__ import annotations

from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from deepscout.agent import nodes
from deepscout.agent.answer_node import answer
from deepscout.agent.run_context import RunContext
from deepscout.agent.state import ResearchState

CHECKPOINT_FILE = "checkpoints.sqlite"

builder: StateGraph[ResearchState, RunContext, ResearchState, ResearchState] = StateGraph(
    ResearchState, context_schema=RunContext
)
builder.add_node("plan", nodes.plan)
builder.add_node("act", nodes.act)
builder.add_node("read", nodes.read)
builder.add_node("reflect", nodes.reflect)
builder.add_node("answer", answer)
builder.add_edge(START, "plan")


def build_graph(
    checkpointer: BaseCheckpointSaver[str] | None = None,
) -> CompiledStateGraph[ResearchState, RunContext, ResearchState, ResearchState]:
    """The compiled research graph; pass a checkpointer to make runs resumable."""
    return builder.compile(checkpointer=checkpointer)


def sqlite_checkpointer(home: Path) -> SqliteSaver:
    """A SQLite checkpointer in ``home`` (the file is created owner-only on first use; WAL mode for
    readers)."""
    import sqlite3

    from deepscout.memory.db import SQLITE_BUSY_TIMEOUT_S, create_private_file, use_wal

    create_private_file(home / CHECKPOINT_FILE)
    connection = sqlite3.connect(
        home / CHECKPOINT_FILE, timeout=SQLITE_BUSY_TIMEOUT_S, check_same_thread=False
    )
    use_wal(connection)
    return SqliteSaver(connection)
