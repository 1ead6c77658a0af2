"""The tool set of a run, by search mode: ``build_tools(mode, ctx)``.

Tools are grouped: ``local`` (corpus search and document reading) and ``web`` (web search and page
fetching). A mode takes the groups it names (``both`` takes both); ``read_document`` is in every mode,
since fetched pages are stored sources too. Each entry is ``"module:function"``, imported only when its
group is used, and the function takes the :class:`~deepscout.tools.base.ToolContext` and returns a tool
whose ``metadata["role"]`` is ``search``, ``read`` or ``fetch`` (see :mod:`deepscout.tools.base`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Literal, get_args

from langchain_core.tools import BaseTool

from deepscout.errors import DeepscoutError
from deepscout.tools.base import ToolContext

SearchMode = Literal["local", "web", "both"]
ToolGroup = Literal["local", "web"]

TOOL_FACTORIES: dict[ToolGroup, list[str]] = {
    "local": [
        "deepscout.tools.corpus_search:build_corpus_search",
        "deepscout.tools.read_document:build_read_document",
    ],
    "web": [
        "deepscout.tools.web_search:build_web_search",
        "deepscout.tools.fetch:build_fetch_url",
    ],
}
MODE_GROUPS: dict[SearchMode, tuple[ToolGroup, ...]] = {
    "local": ("local",),
    "web": ("web",),
    "both": ("local", "web"),
}
ALWAYS = ("deepscout.tools.read_document:build_read_document",)


class UnknownSearchModeError(DeepscoutError, ValueError):
    """The search mode is not local, web or both."""


class ToolsUnavailableError(DeepscoutError, RuntimeError):
    """The mode asks for a tool group that has no tools installed."""


def _factory(path: str) -> Callable[[ToolContext], BaseTool]:
    module_name, _, attribute = path.partition(":")
    factory: Callable[[ToolContext], BaseTool] = getattr(importlib.import_module(module_name), attribute)
    return factory


def build_tools(mode: str, ctx: ToolContext) -> list[BaseTool]:
    """The tools for ``mode`` (local | web | both), each bound to ``ctx``; names are unique."""
    if mode not in get_args(SearchMode):
        raise UnknownSearchModeError(f"unknown search mode {mode!r}; use one of: local, web, both")
    paths: list[str] = []
    for group in MODE_GROUPS[mode]:  # type: ignore[index]
        if not TOOL_FACTORIES[group]:
            raise ToolsUnavailableError(f"no {group} tools are installed; use --search local")
        paths.extend(TOOL_FACTORIES[group])
    paths.extend(ALWAYS)
    tools: dict[str, BaseTool] = {}
    for path in dict.fromkeys(paths):
        tool = _factory(path)(ctx)
        tools.setdefault(tool.name, tool)
    return list(tools.values())


def tools_with_role(tools: list[BaseTool], role: str) -> list[BaseTool]:
    return [tool for tool in tools if (tool.metadata or {}).get("role") == role]
