"""The OpenAI-compatible client on a loopback server that misbehaves: busy answers (503, 429) are retried
through the shared retry policy and the call succeeds; a server echoing the ``Authorization`` header in
its 401 and credentials in the base URL never reach the error text (what is stored and printed)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from deepscout.model_runtime.chat import load_chat_model
from deepscout.model_runtime.chat.exceptions import ChatBackendError
from deepscout.redaction import redact_secrets, redact_url

API_KEY = "sk-live-0123456789abcdefSECRET"


class _Server(ThreadingHTTPServer):
    statuses: list[int]  # answered in order, then 200
    seen: list[dict[str, str]]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append(dict(self.headers))
        status = self.server.statuses.pop(0) if self.server.statuses else 200
        if status != 200:
            echo = {
                "error": {"message": f"bad request, you sent Authorization: {self.headers['Authorization']}"}
            }
            body = json.dumps(echo).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(body)
            return
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "m",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
            ],
        }
        body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _model(settings, base_url: str, **fields):
    """The ``openai:`` model for ``base_url`` with the test key, as an entry point would configure it."""
    server = settings.openai.model_copy(
        update={"base_url": base_url, "api_key": SecretStr(API_KEY), **fields}
    )
    return load_chat_model("openai:some-model", settings=settings.model_copy(update={"openai": server}))


def _server_object(serve_on_loopback, statuses: list[int]) -> tuple[str, _Server]:
    """A loopback server answering ``statuses`` in order (then 200), and the server object."""
    holder: dict[str, _Server] = {}

    class Server(_Server):
        def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*args, **kwargs)
            self.statuses, self.seen = list(statuses), []
            holder["server"] = self

    url = serve_on_loopback(Server, _Handler)
    return url, holder["server"]


def test_busy_answers_are_retried_into_an_answer(serve_on_loopback, settings) -> None:
    url, server = _server_object(serve_on_loopback, [503, 429])
    model = _model(settings, f"{url}/v1", max_retries=2)
    reply = model.invoke([HumanMessage("hi")])
    assert reply.content == "hello" and len(server.seen) == 3


def test_retries_stop_at_max_retries_and_the_echoed_key_is_masked(serve_on_loopback, settings) -> None:
    url, server = _server_object(serve_on_loopback, [503, 503, 503, 503])
    model = _model(settings, f"{url}/v1", max_retries=1)
    with pytest.raises(ChatBackendError) as failure:
        model.invoke([HumanMessage("hi")])
    assert len(server.seen) == 2 and "HTTP 503" in str(failure.value)
    assert API_KEY not in str(failure.value) and "Authorization: ***" in str(failure.value)


def test_a_401_echoing_the_key_and_credentials_in_the_base_url_are_masked(
    serve_on_loopback, settings
) -> None:
    url, server = _server_object(serve_on_loopback, [401])
    with_credentials = url.replace("http://", "http://admin:pa55word@") + "/v1"
    model = _model(settings, with_credentials, max_retries=3)
    with pytest.raises(ChatBackendError) as failure:
        model.invoke([HumanMessage("hi")])
    text = str(failure.value)
    assert len(server.seen) == 1  # a refusal is not retried
    assert API_KEY not in text and "pa55word" not in text and "HTTP 401" in text
    assert "pa55word" not in json.dumps(model._identifying_params)
    unreachable = _model(settings, "http://admin:pa55word@127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(ChatBackendError, match=r"cannot reach http://\*\*\*@127\.0\.0\.1:9/v1") as failure:
        unreachable.invoke("hi")
    assert "pa55word" not in str(failure.value)


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("Authorization: Bearer abcdefgh12345678", "abcdefgh12345678"),
        ('{"authorization": "Bearer abcdefgh12345678"}', "abcdefgh12345678"),
        ("x-subscription-token: BSAabcdef123", "BSAabcdef123"),
        ("GET /search?q=x&api_key=abcdef123456&n=1", "abcdef123456"),
        ("key sk-proj-abcdefghijklmnop was refused", "sk-proj-abcdefghijklmnop"),
        ("https://user:hunter2@example.com/v1", "hunter2"),
    ],
)
def test_credential_shapes_are_masked(text: str, leaked: str) -> None:
    assert leaked not in redact_secrets(text)
    assert redact_secrets("the glacier lost 1.4 metres of ice") == "the glacier lost 1.4 metres of ice"
    assert redact_url("https://example.com/a?b=1") == "https://example.com/a?b=1"
