"""Fixtures of the server tests: a corpus (one document carries XSS payloads), a fake research model
served as ``fake``, the app under a test client, and the app under a real uvicorn server on loopback."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import Field

from deepscout.agent.state import Reflection
from deepscout.memory.corpus import CorpusIndex
from deepscout.memory.db import open_database
from deepscout.memory.schemas import CorpusDocument
from deepscout.model_runtime.chat import BackendRegistry, ChatModel, GenerationControl, StructuredOutputError
from deepscout.settings import ServerSettings, Settings
from deepscout.ui.app import create_app

XSS_TITLE = '"><img src=x onerror="window.__xss=1">Evil <script>window.__xss=2</script>'
XSS_TEXT = (
    "Evil page says <script>window.__xss=3</script> and <img src=x onerror=window.__xss=4> "
    'and [click](javascript:window.__xss=5) and "><svg onload=window.__xss=6>.'
)
DOCUMENTS = [
    ("Dracula", "Dracula", "Dracula is an 1897 Gothic horror novel by the Irish author Bram Stoker."),
    ("Bram Stoker", "Bram Stoker", "Abraham Stoker was an Irish author, born in Clontarf, Dublin, in 1847."),
    (
        "Frankenstein",
        "Frankenstein",
        "Frankenstein is an 1818 novel written by the English author Mary Shelley.",
    ),
    ("evil", XSS_TITLE, XSS_TEXT),
]


class FakeResearchModel(ChatModel):
    answer: str = "Bram Stoker wrote Dracula [1]."
    token_delay: float = 0.0
    context_window: int = 32_768
    prompts: list[str] = Field(default_factory=list)
    """Every prompt it was given, its messages joined (the follow-up test reads them)."""

    @property
    def serves_threads_concurrently(self) -> bool:
        return True

    @property
    def _llm_type(self) -> str:
        return "fake-research"

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        return sum(len(str(message.content).split()) + 4 for message in messages)

    def _reply(self, messages: list[BaseMessage]) -> str:
        self.prompts.append("\n".join(str(m.content) for m in messages))
        last = str(messages[-1].content)
        if "Answer the question" in last:
            return self.answer
        if "JSON" in last and "next_queries" in last:  # the reflection: nothing more to search
            return json.dumps({name: name == "enough" or [] for name in Reflection.model_fields})
        if "JSON" in last:
            prefix = "Question: "
            questions = [str(m.content)[len(prefix) :] for m in messages if str(m.content).startswith(prefix)]
            words = re.findall(r"\w+", questions[-1] if questions else "")
            query = " ".join(words[:6])
            return json.dumps({"queries": [query if len(query) >= 3 else "anything"]})
        return self.answer

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        GenerationControl.from_kwargs(kwargs).check("prefill")
        text = self._reply(messages)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        control = GenerationControl.from_kwargs(kwargs)
        for word in re.findall(r"\S+\s*", self._reply(messages)):
            time.sleep(self.token_delay)
            control.check("decode")
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        def parse(message: AIMessage) -> Any:
            try:
                return schema.model_validate_json(str(message.content))
            except ValueError as error:  # as the real backends report an output off the schema
                raise StructuredOutputError(
                    str(error), attempts=1, last_output=str(message.content)
                ) from error

        return self | RunnableLambda(parse)


@pytest.fixture
def fake_model() -> FakeResearchModel:
    return FakeResearchModel()


@pytest.fixture
def make_settings(tmp_path) -> Callable[..., Settings]:
    """``make_settings(**server_fields)``: settings in a temporary home serving the fake model."""

    def build(**server: Any) -> Settings:
        return Settings(home=tmp_path / "home", model="fake", server=ServerSettings(**server))

    return build


@pytest.fixture
def corpus(make_settings) -> None:
    database = open_database(make_settings())
    CorpusIndex(database.session_factory).add(
        [CorpusDocument(doc_id=doc_id, title=title, text=text) for doc_id, title, text in DOCUMENTS],
        collection="demo",
    )
    database.dispose()


@pytest.fixture
def registry(fake_model) -> BackendRegistry:
    registry = BackendRegistry()
    registry.register("fake", lambda argument, settings: fake_model, takes_argument=False)
    return registry


@pytest.fixture
def make_client(make_settings, registry, corpus) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**server_fields)``: a started app under a test client (closed after the test)."""
    clients: list[TestClient] = []

    def build(**server: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**server), registry=registry))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


@pytest.fixture
def serve_app() -> Iterator[Callable[[Settings, BackendRegistry], str]]:
    """``serve_app(settings, registry) -> URL``: the app under uvicorn on a free loopback port, in a
    thread; every server started is stopped after the test."""
    from deepscout.ui.server import build_server

    stops: list[Callable[[], None]] = []

    def serve(settings: Settings, registry: BackendRegistry) -> str:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update={"port": 0})})
        server = build_server(settings, registry=registry)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)

        def stop() -> None:
            server.should_exit = True
            thread.join(timeout=30)

        stops.append(stop)
        return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"

    yield serve
    for stop in stops:
        stop()


@pytest.fixture
def live_server(serve_app, make_settings, registry, corpus) -> str:
    return serve_app(make_settings(), registry)
