"""Tool execution for the nodes: a round's tool calls run in parallel on a small thread pool; a failing
tool is logged and recorded, and the run goes on without its result."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool

logger = logging.getLogger(__name__)

MAX_WORKERS = 8
OUTPUT_CHARS = 20_000
"""Characters of a tool's output kept in its database record."""

ToolCallSpec = tuple[BaseTool, dict[str, Any]]
"""A tool and the arguments to call it with."""


def _invoke(item: ToolCallSpec) -> tuple[ToolMessage | None, dict[str, Any]]:
    tool, args = item
    call_id = f"call_{uuid.uuid4().hex[:12]}"
    record: dict[str, Any] = {"name": tool.name, "arguments": args, "call_id": call_id}
    try:
        message = tool.invoke({"name": tool.name, "args": args, "id": call_id, "type": "tool_call"})
    except Exception as error:  # a failing tool is recorded and the run goes on
        logger.warning("tool %s failed: %s", tool.name, error)
        record.update(status="error", error=f"{type(error).__name__}: {error}")
        return None, record
    assert isinstance(message, ToolMessage)
    record["output"] = str(message.content)[:OUTPUT_CHARS]
    if message.status == "error":
        record.update(status="error", error=record["output"])
        return None, record
    return message, record


def run_tools(calls: Sequence[ToolCallSpec]) -> list[tuple[ToolMessage | None, dict[str, Any]]]:
    """Invoke the calls in parallel; per call, in order: the message (None on error) and the record for
    ``repository.add_tool_call``."""
    if not calls:
        return []
    with ThreadPoolExecutor(
        max_workers=min(MAX_WORKERS, len(calls)), thread_name_prefix="deepscout-tool"
    ) as pool:
        return list(pool.map(_invoke, calls))
