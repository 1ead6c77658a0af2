"""Tool execution for the nodes: a round's tool calls run in parallel on a small thread pool; a failing
tool is logged and recorded, and the run goes on without its result. The nodes wait for the calls no
longer than the run's deadline: a call still running then is recorded as timed out and left behind (the
tools bound their own work by the same deadline)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
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


def run_tools(
    calls: Sequence[ToolCallSpec], deadline: float
) -> list[tuple[ToolMessage | None, dict[str, Any]]]:
    """Invoke the calls in parallel until ``deadline`` (``time.monotonic()``); per call, in order: the
    message (None on error or when it was still running at the deadline) and the record for
    ``repository.add_tool_call``."""
    if not calls:
        return []
    pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, len(calls)), thread_name_prefix="deepscout-tool")
    try:
        futures = [pool.submit(_invoke, call) for call in calls]
        wait(futures, timeout=max(0.0, deadline - time.monotonic()))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    results: list[tuple[ToolMessage | None, dict[str, Any]]] = []
    for (tool, args), future in zip(calls, futures, strict=True):
        if future.done() and not future.cancelled():
            results.append(future.result())
            continue
        logger.warning("tool %s still running at the wall-time deadline; answering without it", tool.name)
        record = {"name": tool.name, "arguments": args, "call_id": f"call_{uuid.uuid4().hex[:12]}"}
        results.append((None, {**record, "status": "error", "error": "timed out at the wall-time deadline"}))
    return results
