"""The research agent with ``search="web"``: a scripted chat model plans one query; the agent searches
(ddgs patched, no real web), fetches the result pages from the loopback server, cites them; a second run
over the same database replays the search and the pages without any request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda
from pydantic import BaseModel

from deepscout.model_runtime.chat import ChatModel


class ScriptModel(ChatModel):
    """Answers the planner, every reflection and the answer step with scripted texts (structured output
    parsed from the same texts)."""

    plan: str
    reflection: str
    answer: str

    @property
    def _llm_type(self) -> str:
        return "web-script"

    def count_tokens(self, messages: Sequence[BaseMessage], tools: Sequence[Any] | None = None) -> int:
        return sum(len(str(message.content).split()) for message in messages) + 2

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        instruction = str(messages[-1].content)
        text = self.plan if "search queries" in instruction else self.answer
        text = self.reflection if "still" in instruction else text
        prompt = self.count_tokens(messages)
        message = AIMessage(
            content=text,
            response_metadata={
                "prefill": {"prompt_tokens": prompt, "reused_tokens": 0, "computed_tokens": prompt}
            },
            usage_metadata={"input_tokens": prompt, "output_tokens": 1, "total_tokens": prompt + 1},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        def parse(message: AIMessage) -> BaseModel:
            return schema.model_validate_json(str(message.content))

        return self | RunnableLambda(parse)


def test_web_research_then_an_offline_replay(
    settings, database, web_server, fake_search_http, monkeypatch
) -> None:
    from deepscout.agent.api import research
    from deepscout.agent.options import Budgets, ResearchOptions
    from deepscout.settings import Settings

    # the web settings come from the environment, read when the entry point builds Settings
    monkeypatch.setenv("DEEPSCOUT_WEB_ALLOW_LOOPBACK", "true")
    monkeypatch.setenv("DEEPSCOUT_WEB_ALLOWED_PORTS", json.dumps([80, 443, web_server.port]))
    monkeypatch.setenv("DEEPSCOUT_WEB_TEXT_BACKENDS", '["duckduckgo"]')
    monkeypatch.setenv("DEEPSCOUT_WEB_PER_DOMAIN_MIN_INTERVAL_S", "0")
    settings = Settings(home=settings.home)
    article, pdf = web_server.url("/article"), web_server.url("/doc.pdf")
    fake_search_http.serve_results(
        [("Glacier retreat doubled", article, "Ice loss doubled."), ("Glacier survey", pdf, "176 glaciers.")]
    )

    def run() -> Any:
        model = ScriptModel(
            plan='{"queries":["Aletsch glacier thinning"]}',
            reflection='{"next_queries":[]}',
            answer="The Aletsch glacier thins by 1.4 metres a year [2].",
        )
        return research(
            "How fast is the Aletsch glacier thinning?",
            settings=settings,
            model=model,
            options=ResearchOptions(search="web", budgets=Budgets(max_steps=3)),
            database=database,
        )

    first = run()
    assert [(s["title"], s["url"]) for s in first.sources] == [
        ("Glacier retreat in the Alps doubled since 2000", article),
        ("Alpine Glacier Survey 2023", pdf),
    ]
    assert "[2]" in first.answer and first.citations
    searches, pages = len(fake_search_http.calls), web_server.hits["/article"] + web_server.hits["/doc.pdf"]

    second = run()
    assert len(fake_search_http.calls) == searches  # the search came from the cache
    assert web_server.hits["/article"] + web_server.hits["/doc.pdf"] == pages  # the pages from the store
    assert second.sources == first.sources and second.answer == first.answer
