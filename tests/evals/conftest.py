"""A real chat-completions HTTP server on loopback that plays every model role of an eval run.

Standard library only (``http.server`` in a thread), streaming server-sent events the way the
OpenAI-compatible backend asks for them (``stream: true`` with usage in the last chunk). It answers by
looking at the prompt, as a model would:

- the agent's planner (:data:`deepscout.agent.prompts.PLAN_INSTRUCTION`) gets a JSON plan with one
  keyword query made from the question, and its reflection (``REFLECT_INSTRUCTION``) gets
  ``{"next_queries": []}``;
- the agent's answer prompt (``ANSWER_INSTRUCTION``) and the RAG prompt (``RAG_USER``) get a short answer
  naming the first document in the prompt and citing it as [1];
- the judge's structured-output request (one tool, ``PairwiseVerdict``, forced) gets a tool call whose
  arguments are a valid verdict: the agent's answer wins, wherever it stands, unless the question is one
  the server is told to judge by position (then "A" always wins, so the two orders disagree).

Anything else is answered HTTP 400, and every request is recorded with its role, its question and the
usage the server reported, so a test can check what the harness stored against what the server said.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from deepscout.agent import prompts as agent_prompts
from deepscout.evals import judge_prompts as eval_prompts

AGENT_ANSWER_PREFIX = "From the research:"
RAG_ANSWER_PREFIX = "From the passages:"
_PLAN_START = agent_prompts.PLAN_INSTRUCTION.split("{", 1)[0]
_REFLECT_START = agent_prompts.REFLECT_INSTRUCTION.split("{", 1)[0]
_ANSWER_START = agent_prompts.ANSWER_INSTRUCTION.split("{", 1)[0]
_RAG_START = eval_prompts.RAG_USER.split("{", 1)[0]
_QUESTION_START = agent_prompts.QUESTION.split("{", 1)[0]
_JUDGE_ANSWERS = re.compile(
    r"Answer A:\n<untrusted_data[^>]*>\n(?P<a>.*?)\n</untrusted_data>\n\n"
    r"Answer B:\n<untrusted_data[^>]*>\n(?P<b>.*?)\n</untrusted_data>\n\nWhich answer",
    re.S,
)
_DOCUMENT_TITLE = re.compile(r"^\[(\d+)\]\n<untrusted_data[^>]*>\n(.+)$", re.M)
"""A document as the agent and the RAG prompt show it: ``[n]``, then its title inside the data block."""


@dataclass(frozen=True)
class ServedRequest:
    role: str
    """plan, reflect, agent_answer, rag_answer or judge."""
    question: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    body: dict[str, Any]
    answers: tuple[str, str] | None = None
    """Judge requests: answer A and answer B as the judge saw them."""


@dataclass
class EvalChatServer:
    url: str
    requests: list[ServedRequest] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    position_biased: set[str] = field(default_factory=set)
    """Questions the judge decides by position (always "A")."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def of_role(self, role: str) -> list[ServedRequest]:
        return [r for r in self.requests if r.role == role]


class UnrecognisedPrompt(ValueError):
    pass


def _text(message: dict[str, Any]) -> str:
    return str(message.get("content") or "")


def _agent_question(messages: list[dict[str, Any]]) -> str:
    """The question of an agent transcript: its last ``Question: ...`` turn (the first is the example's)."""
    for message in reversed(messages):
        if message.get("role") == "user" and _text(message).startswith(_QUESTION_START):
            return _text(message).removeprefix(_QUESTION_START).strip()
    raise UnrecognisedPrompt("agent transcript without a question turn")


def _first_document_title(messages: list[dict[str, Any]]) -> str:
    """The title of the document numbered [1] in the prompt (the last one so numbered: the example's
    documents come first in an agent transcript)."""
    firsts = [
        found.group(2)
        for message in messages
        for found in _DOCUMENT_TITLE.finditer(_text(message))
        if found.group(1) == "1"
    ]
    if not firsts:
        raise UnrecognisedPrompt("answer prompt without a document [1]")
    return firsts[-1].strip()


def _keywords(question: str, limit: int = 60) -> str:
    """A short keyword query from the question (the planner's queries are at most 80 characters)."""
    words = [w.strip("?,.'\"") for w in question.split()]
    query = ""
    for word in (w for w in words if len(w) > 3 or w[:1].isupper()):
        if len(query) + len(word) + 1 > limit:
            break
        query = f"{query} {word}".strip()
    return query


def _judge_winner(server: EvalChatServer, question: str, answer_a: str, answer_b: str) -> str:
    if question in server.position_biased:
        return "A"
    a_agent, b_agent = answer_a.startswith(AGENT_ANSWER_PREFIX), answer_b.startswith(AGENT_ANSWER_PREFIX)
    if a_agent == b_agent:
        return "tie"
    return "A" if a_agent else "B"


def _reply(server: EvalChatServer, body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """(role, question, assistant turn) for one request; raises UnrecognisedPrompt."""
    messages: list[dict[str, Any]] = body.get("messages", [])
    last = _text(messages[-1]) if messages else ""
    tools = body.get("tools") or []
    if tools:
        name = tools[0]["function"]["name"]
        if name != "PairwiseVerdict" or body.get("tool_choice") != "required":
            raise UnrecognisedPrompt(
                f"unexpected tools request {name!r}, tool_choice {body.get('tool_choice')}"
            )
        found = _JUDGE_ANSWERS.search(last)
        if found is None or not last.startswith("Question: "):
            raise UnrecognisedPrompt("judge prompt without a question and two answers")
        question = last.removeprefix("Question: ").split("\n", 1)[0]
        winner = _judge_winner(server, question, found["a"], found["b"])
        arguments = json.dumps({"winner": winner, "reason": f"{winner} is better supported."})
        call = {"id": "call_judge", "type": "function", "function": {"name": name, "arguments": arguments}}
        return "judge", question, {"content": None, "tool_calls": [call], "answers": (found["a"], found["b"])}
    if last.startswith(_PLAN_START):
        question = _agent_question(messages)
        return "plan", question, {"content": json.dumps({"queries": [_keywords(question)]})}
    if last.startswith(_REFLECT_START):
        question = _agent_question(messages)
        return "reflect", question, {"content": json.dumps({"next_queries": []})}
    if last.startswith(_ANSWER_START):
        question = _agent_question(messages)
        title = _first_document_title(messages)
        return "agent_answer", question, {"content": f"{AGENT_ANSWER_PREFIX} {title} [1]."}
    if last.startswith(_RAG_START) and messages[0].get("content") == eval_prompts.RAG_SYSTEM:
        question = last.rsplit("Question: ", 1)[1].removesuffix("\nAnswer:").strip()
        title = _first_document_title(messages)
        return "rag_answer", question, {"content": f"{RAG_ANSWER_PREFIX} {title} [1]."}
    raise UnrecognisedPrompt(f"no role for a prompt ending {last[-120:]!r}")


def _usage(body: dict[str, Any], reply: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens: characters / 4 of the prompt, half of it a cache hit (as
    DeepSeek reports ``prompt_cache_hit_tokens``), words of the reply."""
    prompt = max(1, len(json.dumps(body.get("messages", []))) // 4)
    written = str(reply.get("content") or "") + "".join(
        c["function"]["arguments"] for c in reply.get("tool_calls") or []
    )
    return prompt, prompt // 2, len(written.split())


class _Handler(BaseHTTPRequestHandler):
    server_state: EvalChatServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        state = self.server_state
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._json(404, {"error": {"message": f"no route {self.path}"}})
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        try:
            role, question, reply = _reply(state, body)
        except UnrecognisedPrompt as error:
            with state.lock:
                state.refused.append(str(error))
            self._json(400, {"error": {"message": str(error), "type": "invalid_request_error"}})
            return
        prompt, cached, completion = _usage(body, reply)
        with state.lock:
            state.requests.append(
                ServedRequest(role, question, prompt, cached, completion, body, reply.pop("answers", None))
            )
        self._stream(body["model"], reply, prompt, cached, completion)

    def _stream(self, model: str, reply: dict[str, Any], prompt: int, cached: int, completion: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        calls = reply.get("tool_calls") or []
        deltas: list[tuple[dict[str, Any], str | None]] = [({"role": "assistant", "content": ""}, None)]
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            head = {"index": index, "id": call["id"], "type": "function"}
            deltas.append(({"tool_calls": [{**head, "function": {"name": call["function"]["name"]}}]}, None))
            for piece in (arguments[: len(arguments) // 2], arguments[len(arguments) // 2 :]):
                deltas.append(({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}, None))
        words = str(reply.get("content") or "").split(" ")
        if reply.get("content"):
            deltas += [
                ({"content": w + (" " if i < len(words) - 1 else "")}, None) for i, w in enumerate(words)
            ]
        deltas.append(({}, "tool_calls" if calls else "stop"))
        for delta, finish in deltas:
            self._event(model, [{"index": 0, "delta": delta, "finish_reason": finish}])
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_cache_hit_tokens": cached,
            "prompt_cache_miss_tokens": prompt - cached,
        }
        self._event(model, [], usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, model: str, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> None:
        event: dict[str, Any] = {
            "id": "cmpl-eval",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
        }
        if usage is not None:
            event["usage"] = usage
        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.flush()

    def _json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def eval_chat_server(serve_on_loopback: Any) -> EvalChatServer:
    """The role-playing chat-completions server on 127.0.0.1 (a free port), stopped after the test."""
    handler = type("Handler", (_Handler,), {})
    state = EvalChatServer(url=serve_on_loopback(ThreadingHTTPServer, handler) + "/v1")
    handler.server_state = state  # type: ignore[attr-defined]
    return state
