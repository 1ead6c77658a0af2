"""Tools and structured output for the embedded backends, which decode both under a grammar.

Binding records what was asked (``tools`` and ``tool_choice``, or a ``response_format`` schema) as call
arguments; the backend's ``_generate`` turns them into a grammar over its own tokenizer, decodes under it
with bounded retries, and reports what it decoded. Here the decoded JSON is validated against the schema.
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage
from langchain_core.runnables import Runnable, RunnableLambda, RunnableMap, RunnablePassthrough
from pydantic import BaseModel, ValidationError

from deepscout.model_runtime.chat.exceptions import StructuredOutputError
from deepscout.model_runtime.chat.interface import BackendChatModel


class GrammarChatModel(BackendChatModel):
    """A chat model whose tool calls and structured output are decoded under a grammar.

    ``bind_tools`` (the chat model's own) records the tools and ``tool_choice`` as call arguments;
    ``with_structured_output`` records a ``response_format`` schema the same way.
    """

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Decode one JSON object under ``schema`` (a pydantic class or a JSON schema), then validate it."""
        kwargs.pop("method", None)
        kwargs.pop("strict", None)
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        pydantic_class = schema if isinstance(schema, type) and issubclass(schema, BaseModel) else None
        json_schema = pydantic_class.model_json_schema() if pydantic_class else dict(schema)  # type: ignore[arg-type]
        bound = self.bind(response_format={"schema": json_schema})

        def parse(message: AIMessage) -> dict[str, Any] | BaseModel:
            raw = str(message.response_metadata.get("raw_output", message.content))
            if pydantic_class is None:
                parsed: dict[str, Any] = json.loads(raw)
                return parsed
            try:
                return pydantic_class.model_validate_json(raw)
            except ValidationError as error:
                raise StructuredOutputError(
                    f"output does not validate as {pydantic_class.__name__}: {error}",
                    attempts=int(message.response_metadata.get("attempts", 1)),
                    last_output=raw,
                ) from error

        parser = RunnableLambda(parse)
        if not include_raw:
            return bound | parser
        return RunnableMap(raw=bound) | RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
