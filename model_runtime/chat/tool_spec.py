"""A tool as a chat model sees it, shared by every backend and by the V4 chat format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolSpec:
    """A tool the model may call: its name, description and JSON-schema parameters."""

    name: str
    description: str
    parameters: dict[str, Any]

    def schema(self) -> dict[str, Any]:
        """The function definition as chat formats list it in the system prompt."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}
