"""How every deepscout tool is put together: a LangChain ``StructuredTool`` with pydantic arguments that
returns ``(content, artifact)``, its ``metadata["role"]`` telling the agent what it is for (see
:mod:`deepscout.tools.base`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from langchain_core.tools import StructuredTool
from pydantic import BaseModel

from deepscout.tools.base import ToolRole


def content_and_artifact_tool(
    func: Callable[..., tuple[str, Any]],
    *,
    name: str,
    args_schema: type[BaseModel],
    role: ToolRole,
    **options: Any,
) -> StructuredTool:
    """The tool running ``func`` (its docstring is the description unless ``options`` give one); other
    ``options`` (``coroutine``, ``handle_tool_error``…) go to ``StructuredTool.from_function``."""
    tool = StructuredTool.from_function(
        func=func, name=name, args_schema=args_schema, response_format="content_and_artifact", **options
    )
    metadata: dict[str, Any] = {"role": role}
    tool.metadata = metadata
    return tool
