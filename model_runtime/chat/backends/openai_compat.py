"""``openai:MODEL``: any OpenAI-compatible chat-completions server (DeepSeek API, vLLM, SGLang).

Configured from the environment through :class:`OpenAISettings` (``DEEPSCOUT_OPENAI_BASE_URL``,
``DEEPSCOUT_OPENAI_API_KEY``, ``DEEPSCOUT_OPENAI_THINKING``, ``DEEPSCOUT_OPENAI_REASONING_EFFORT``, ...).

DeepSeek's rules are followed for every server: thinking is switched with
``{"thinking": {"type": "enabled"|"disabled"}}`` and ``reasoning_effort``; in thinking mode a forced
``tool_choice`` is never sent (the API answers 400), and the ``reasoning_content`` of an assistant
tool-call turn is sent back with it (the API answers 400 when it is missing). Requests always stream, so
the deadline and cancellation are honoured between chunks; token usage comes from the server.

Connection errors and HTTP 408/409/429/5xx are retried (``max_retries`` times) through the shared
:class:`~deepscout.retry_policy.RetryPolicy`, within the call's deadline, before the stream starts. Error
text never carries the API key or credentials written into the base URL: a server that echoes the
``Authorization`` header in its error body is masked (:mod:`deepscout.redaction`) before the error is
raised, so nothing stored or printed holds the key.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_chunk_to_message,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import PrivateAttr, SecretStr

from deepscout.model_runtime.chat.exceptions import ChatBackendError, GenerationDeadlineExceeded
from deepscout.model_runtime.chat.interface import BackendChatModel, ChatCall
from deepscout.model_runtime.chat.message_text import content_text
from deepscout.model_runtime.chat.usage import Usage, usage_fields
from deepscout.redaction import redact_secrets, redact_url
from deepscout.retry_policy import RetryPolicy

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletionChunk

    from deepscout.settings import Settings

logger = logging.getLogger(__name__)

DEEPSEEK_V4_CONTEXT_WINDOW = 1_048_576
DEFAULT_CONTEXT_WINDOW = 131_072
RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRY_FIRST_DELAY_S = 0.5
FORCED_TOOL_CHOICES = ("any", "required")


def _is_deepseek(model: str) -> bool:
    return model.lower().startswith("deepseek")


class OpenAICompatChatModel(BackendChatModel):
    """Chat completions over HTTP with streaming, tools, thinking control and server-side usage."""

    model_name: str
    base_url: str
    api_key: SecretStr
    thinking: bool | None = None
    reasoning_effort: str | None = None
    timeout_s: float = 600.0
    max_retries: int = 2
    max_tokens: int | None = None
    temperature: float | None = None

    backend_type = "deepscout-openai-compat"
    identifying_fields = ("model_name", "base_url", "thinking")

    _client: openai.OpenAI = PrivateAttr()

    def model_post_init(self, context: Any, /) -> None:
        import openai

        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self.api_key.get_secret_value(),
            timeout=self.timeout_s,
            max_retries=0,  # retries go through the shared RetryPolicy (see _create)
        )

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {**super()._identifying_params, "base_url": redact_url(self.base_url)}

    def _redacted(self, text: str) -> str:
        return redact_secrets(text, [self.api_key.get_secret_value()])

    @property
    def serves_threads_concurrently(self) -> bool:
        """True: the server does the work; the HTTP client is thread-safe."""
        return True

    @property
    def thinking_active(self) -> bool:
        """Whether requests run in thinking mode (DeepSeek-V4 thinks unless told not to)."""
        if self.thinking is not None:
            return self.thinking
        return _is_deepseek(self.model_name) and "chat" not in self.model_name.lower()

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        """Tokens of the V4-format prompt in the V4 tokenizer for DeepSeek models; for other servers an
        estimate (UTF-8 bytes / 4, rounded up). The server's ``usage`` on each answer is the exact count."""
        payload = [message_to_openai(message) for message in messages]
        formatted = [convert_to_openai_tool(tool) for tool in tools] if tools else []
        if _is_deepseek(self.model_name):
            from deepscout.model_runtime.v4.chat_format.token_count import count_chat_tokens

            return count_chat_tokens(payload, tools=formatted or None, thinking=self.thinking_active)
        text = json.dumps(payload, ensure_ascii=False) + json.dumps(formatted, ensure_ascii=False)
        return math.ceil(len(text.encode()) / 4)

    # ----------------------------------------------------------------- requests

    def _request(self, call: ChatCall) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model_name,
            "messages": [message_to_openai(message) for message in call.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        extra_body: dict[str, Any] = {}
        if self.thinking is not None:
            extra_body["thinking"] = {"type": "enabled" if self.thinking else "disabled"}
        if self.reasoning_effort:
            request["reasoning_effort"] = self.reasoning_effort
        max_tokens = call.control.max_new_tokens or self.max_tokens
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        if self.temperature is not None and not self.thinking_active:
            request["temperature"] = self.temperature
        if call.stop:
            request["stop"] = call.stop
        tools = call.options.get("tools")
        if tools:
            request["tools"] = tools
            choice = _tool_choice(call.options.get("tool_choice"))
            if choice is not None and self.thinking_active and choice not in ("auto", "none"):
                logger.info("thinking mode: not forcing tool_choice=%r (the server would refuse it)", choice)
                choice = None
            if choice is not None:
                request["tool_choice"] = choice
        if extra_body:
            request["extra_body"] = extra_body
        return request

    def _respond_stream(self, call: ChatCall) -> Iterator[ChatGenerationChunk]:
        import openai

        control, run_manager = call.control, call.run_manager
        request = self._request(call)
        control.check("request")
        remaining = control.remaining()
        timeout = self.timeout_s if remaining is None else max(0.001, min(self.timeout_s, remaining))
        policy = RetryPolicy(attempts=self.max_retries + 1, first_delay_s=RETRY_FIRST_DELAY_S)
        server = redact_url(self.base_url)

        def create() -> openai.Stream[ChatCompletionChunk]:
            return self._client.chat.completions.create(**request, timeout=timeout)

        try:
            stream = policy.retrying(_worth_retrying, deadline=control.deadline)(create)
        except openai.APITimeoutError as error:  # before APIConnectionError, its base class
            if control.deadline is not None:
                raise GenerationDeadlineExceeded("deadline exceeded waiting for the server") from error
            raise ChatBackendError(f"{server} did not answer within {timeout:g}s") from None
        except openai.APIConnectionError as error:
            raise ChatBackendError(
                self._redacted(
                    f"cannot reach {server} ({error}); start the server or set DEEPSCOUT_OPENAI_BASE_URL"
                )
            ) from None
        except openai.APIStatusError as error:
            raise ChatBackendError(
                self._redacted(f"{server} answered HTTP {error.status_code}: {_error_text(error)}"),
                status_code=error.status_code,
            ) from None
        with stream:
            try:
                for event in stream:
                    control.check("streaming")
                    chunk = _chunk_from_event(event, self.model_name)
                    if chunk is None:
                        continue
                    if run_manager is not None and isinstance(chunk.content, str) and chunk.content:
                        run_manager.on_llm_new_token(chunk.content, chunk=ChatGenerationChunk(message=chunk))
                    yield ChatGenerationChunk(message=chunk)
            except openai.APITimeoutError as error:
                raise GenerationDeadlineExceeded("deadline exceeded while streaming") from error

    def _respond(self, call: ChatCall) -> AIMessage:
        chunks = self._respond_stream(call)
        merged = next(chunks, None)
        if merged is None:
            raise ChatBackendError(f"{redact_url(self.base_url)} returned an empty stream")
        for chunk in chunks:
            merged += chunk
        message = message_chunk_to_message(merged.message)
        assert isinstance(message, AIMessage)
        return message


def _worth_retrying(error: BaseException) -> bool:
    """Connection errors and the statuses a server answers when busy or restarting (not timeouts: the
    deadline decides those)."""
    import openai

    if isinstance(error, openai.APITimeoutError):
        return False
    if isinstance(error, openai.APIConnectionError):
        return True
    return isinstance(error, openai.APIStatusError) and error.status_code in RETRIED_STATUSES


def _tool_choice(choice: str | dict[str, Any] | bool | None) -> str | dict[str, Any] | None:
    if choice is None:
        return None
    if choice is True or choice in FORCED_TOOL_CHOICES:
        return "required"
    if isinstance(choice, dict):
        return choice
    if choice in ("auto", "none"):
        return str(choice)
    return {"type": "function", "function": {"name": choice}}


def message_to_openai(message: BaseMessage) -> dict[str, Any]:
    """One LangChain message as a chat-completions message (assistant tool calls keep their reasoning)."""
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": content_text(message.content)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": content_text(message.content)}
    if isinstance(message, ToolMessage):
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id,
            "content": content_text(message.content),
        }
    if isinstance(message, AIMessage):
        payload: dict[str, Any] = {"role": "assistant", "content": content_text(message.content) or None}
        if message.tool_calls:
            payload["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {
                        "name": call["name"],
                        "arguments": json.dumps(call["args"], ensure_ascii=False),
                    },
                }
                for call in message.tool_calls
            ]
            reasoning = message.additional_kwargs.get("reasoning_content")
            if reasoning:
                payload["reasoning_content"] = reasoning
        return payload
    raise ValueError(f"cannot send a {type(message).__name__} to a chat-completions server")


def _chunk_from_event(event: Any, model_name: str) -> AIMessageChunk | None:
    usage = getattr(event, "usage", None)
    if not event.choices:
        if usage is None:
            return None
        return AIMessageChunk(content="", **_usage_fields(usage, model_name))
    choice = event.choices[0]
    delta = choice.delta
    additional: dict[str, Any] = {}
    reasoning = getattr(delta, "reasoning_content", None)
    if reasoning is None and delta.model_extra:
        reasoning = delta.model_extra.get("reasoning_content")
    if reasoning:
        additional["reasoning_content"] = reasoning
    tool_chunks = [
        tool_call_chunk(
            name=call.function.name if call.function else None,
            args=call.function.arguments if call.function else None,
            id=call.id,
            index=call.index,
        )
        for call in delta.tool_calls or []
    ]
    fields: dict[str, Any] = {}
    if choice.finish_reason:
        fields["response_metadata"] = {"finish_reason": choice.finish_reason}
    if usage is not None:
        fields.update(_usage_fields(usage, model_name, fields.get("response_metadata")))
    return AIMessageChunk(
        content=delta.content or "",
        additional_kwargs=additional,
        tool_call_chunks=tool_chunks,
        id=event.id,
        **fields,
    )


def _usage_fields(usage: Any, model_name: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The message fields of the server's ``usage`` (its prompt-cache hits count as reused)."""
    prompt = int(usage.prompt_tokens or 0)
    extra = usage.model_extra or {}
    cached = extra.get("prompt_cache_hit_tokens")
    details = getattr(usage, "prompt_tokens_details", None)
    if cached is None and details is not None:
        cached = getattr(details, "cached_tokens", None)
    reused = int(cached or 0)
    counted = Usage(prompt, reused, prompt - reused, output_tokens=int(usage.completion_tokens or 0))
    return usage_fields(counted, {**(metadata or {}), "model_name": model_name})


def _error_text(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
    return str(error.message)


def load_chat_model(argument: str | None, settings: Settings) -> OpenAICompatChatModel:
    """``openai:MODEL`` on the server that ``settings.openai`` describes."""
    server = settings.openai
    model = str(argument)
    window = server.context_window or (
        DEEPSEEK_V4_CONTEXT_WINDOW if "v4" in model.lower() else DEFAULT_CONTEXT_WINDOW
    )
    fields = OpenAICompatChatModel.fields_from(server, exclude={"context_window"})
    return OpenAICompatChatModel(model_name=model, context_window=window, **fields)
