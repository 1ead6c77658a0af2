"""Fixtures of the chat-model tests: a tiny random Llama for the batching/caching tests, and a real
chat-completions HTTP server on loopback that behaves like DeepSeek's API where it matters.

Standard library only (``http.server`` in a thread). It answers ``POST /v1/chat/completions`` with
JSON or server-sent events, calls the first tool when tools are offered and the last turn is the user's,
answers from the tool result otherwise, and refuses (HTTP 400, DeepSeek's wording) a forced
``tool_choice`` in thinking mode and an assistant tool-call turn sent back without ``reasoning_content``.
Thinking is on by default for ``deepseek-v4*`` models and switched by ``{"thinking": {"type": ...}}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@dataclass
class FakeChatServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay_per_chunk_s: float = 0.0


def _thinking(body: dict[str, Any]) -> bool:
    switch = body.get("thinking", {}).get("type")
    if switch is not None:
        return bool(switch == "enabled")
    return str(body.get("model", "")).startswith("deepseek-v4")


def _refusal(body: dict[str, Any]) -> str | None:
    if not _thinking(body):
        return None
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("auto", "none"):
        return "deepseek-v4 thinking mode does not support this tool_choice"
    for index, message in enumerate(body.get("messages", [])):
        if (
            message.get("role") == "assistant"
            and message.get("tool_calls")
            and not message.get("reasoning_content")
        ):
            return f"Missing `reasoning_content` field in the assistant message at message index {index}"
    return None


def _words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in body.get("messages", [])) + 3


def _reply(body: dict[str, Any]) -> dict[str, Any]:
    """The assistant turn: reasoning (thinking mode), then a tool call or a text answer."""
    messages = body.get("messages", [])
    last = messages[-1] if messages else {"role": "user", "content": ""}
    reasoning = f"The user asked about {str(last.get('content'))[:40]}." if _thinking(body) else None
    tools = body.get("tools") or []
    if tools and last.get("role") == "user" and body.get("tool_choice") != "none":
        function = tools[0]["function"]
        properties = function.get("parameters", {}).get("properties", {})
        argument = next(iter(properties), "query")
        calls = [
            {
                "id": "call_1",
                "type": "function",
                "function": {
                    "name": function["name"],
                    "arguments": json.dumps({argument: last.get("content")}),
                },
            },
        ]
        return {"content": None, "reasoning_content": reasoning, "tool_calls": calls}
    if last.get("role") == "tool":
        return {"content": f"Per the tool: {last.get('content')}", "reasoning_content": reasoning}
    return {"content": f"You said: {last.get('content')}", "reasoning_content": reasoning}


class _Handler(BaseHTTPRequestHandler):
    server_state: FakeChatServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        self.server_state.requests.append(body)
        refusal = _refusal(body)
        if refusal is not None:
            self._json(
                400,
                {
                    "error": {
                        "message": refusal,
                        "type": "invalid_request_error",
                        "code": "invalid_request_error",
                    }
                },
            )
            return
        reply = _reply(body)
        usage = {
            "prompt_tokens": _words(body),
            "completion_tokens": 5,
            "total_tokens": _words(body) + 5,
            "prompt_cache_hit_tokens": 2,
            "prompt_cache_miss_tokens": _words(body) - 2,
        }
        finish = "tool_calls" if reply.get("tool_calls") else "stop"
        if not body.get("stream"):
            message = {"role": "assistant", **{k: v for k, v in reply.items() if v is not None}}
            self._json(
                200,
                {
                    "id": "cmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "usage": usage,
                    "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for delta, finish_reason in self._deltas(reply, finish):
            event = {
                "id": "cmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
            self._event(event)
        self._event(
            {
                "id": "cmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [],
                "usage": usage,
            }
        )
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _deltas(self, reply: dict[str, Any], finish: str) -> Iterator[tuple[dict[str, Any], str | None]]:
        yield {"role": "assistant", "content": ""}, None
        if reply.get("reasoning_content"):
            for word in str(reply["reasoning_content"]).split(" "):
                yield {"reasoning_content": word + " "}, None
        for index, call in enumerate(reply.get("tool_calls") or []):
            yield (
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call["id"],
                            "type": "function",
                            "function": {"name": call["function"]["name"], "arguments": ""},
                        }
                    ]
                },
                None,
            )
            arguments = call["function"]["arguments"]
            half = len(arguments) // 2
            for piece in (arguments[:half], arguments[half:]):
                yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None
        if reply.get("content"):
            words = str(reply["content"]).split(" ")
            for position, word in enumerate(words):
                yield {"content": word + (" " if position < len(words) - 1 else "")}, None
        yield {}, finish

    def _event(self, event: dict[str, Any]) -> None:
        if self.server_state.delay_per_chunk_s:
            time.sleep(self.server_state.delay_per_chunk_s)
        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.flush()

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up mid-stream (deadline and cancel tests) are expected; stay quiet."""


@pytest.fixture
def chat_server(serve_on_loopback: Any) -> FakeChatServer:
    """A chat-completions server on 127.0.0.1 (a free port), stopped after the test."""
    handler = type("Handler", (_Handler,), {})
    state = FakeChatServer(url=serve_on_loopback(_QuietServer, handler) + "/v1")
    handler.server_state = state  # type: ignore[attr-defined]
    return state


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    """A two-layer random Llama small enough to batch and cache in milliseconds."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return LlamaForCausalLM(config).eval()
