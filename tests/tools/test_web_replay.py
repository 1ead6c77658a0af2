"""Replay: a fake chat model issues the same web tool calls in two runs over one database; the second run
searches and fetches nothing (ddgs's HTTP client and the page server count every request)."""

from __future__ import annotations

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from deepscout.tools.registry import build_tools


def _script(article: str, pdf: str) -> list[AIMessage]:
    return [
        AIMessage(
            content="",
            tool_calls=[{"name": "web_search", "args": {"query": "Aletsch glacier thinning"}, "id": "s1"}],
        ),
        AIMessage(
            content="",
            tool_calls=[
                {"name": "fetch_url", "args": {"url": article, "length": 500}, "id": "f1"},
                {"name": "fetch_url", "args": {"url": pdf}, "id": "f2"},
            ],
        ),
        AIMessage(content="The Aletsch glacier thins by about 1.4 m a year [1][2]."),
    ]


def _run(ctx, script: list[AIMessage], question: str) -> list[BaseMessage]:
    """The smallest agent loop: ask the model, run the tool calls it makes, until it answers."""
    model = GenericFakeChatModel(messages=iter(script))
    tools = {tool.name: tool for tool in build_tools("web", ctx)}
    ctx.provenance.add_from_user_text(question)
    messages: list[BaseMessage] = [HumanMessage(content=question)]
    while True:
        reply = model.invoke(messages)
        messages.append(reply)
        if not isinstance(reply, AIMessage) or not reply.tool_calls:
            return messages
        for call in reply.tool_calls:
            result = tools[call["name"]].invoke({**call, "type": "tool_call"})
            assert isinstance(result, ToolMessage)
            messages.append(result)


def test_second_run_searches_and_fetches_nothing(make_context, fake_search_http, web_server) -> None:
    article, pdf = web_server.url("/article"), web_server.url("/doc.pdf")
    fake_search_http.serve_results(
        [
            ("Glacier retreat in the Alps doubled", article, "Ice loss doubled since 2000."),
            ("Alpine Glacier Survey 2023 (PDF)", pdf, "Mass balance of 176 glaciers."),
        ]
    )
    question = "How fast is the Aletsch glacier thinning?"

    first = make_context(text_backends=["duckduckgo"])
    first_messages = _run(first, _script(article, pdf), question)
    searches, pages = len(fake_search_http.calls), web_server.hits["/article"] + web_server.hits["/doc.pdf"]
    assert searches == 1 and pages >= 2
    assert first.web.counters["fetch_network"] == 2

    second = make_context(text_backends=["duckduckgo"])
    second_messages = _run(second, _script(article, pdf), question)
    assert len(fake_search_http.calls) == searches
    assert web_server.hits["/article"] + web_server.hits["/doc.pdf"] == pages
    counters = second.web.counters
    assert counters["search_network"] == 0 and counters["fetch_network"] == 0
    assert counters["search_cache_hits"] == 1 and counters["fetch_store_hits"] == 2
    # the model saw the same pages both times; the replayed search also says they are stored, so an
    # agent can read them by source id
    assert [m.content for m in second_messages[3:]] == [m.content for m in first_messages[3:]]
    stored = [hit["source_id"] for hit in second_messages[2].artifact]
    assert stored == [m.artifact["source_id"] for m in first_messages[4:6]]
    assert str(second_messages[2].content).replace(f" [stored as source {stored[0]}]", "").replace(
        f" [stored as source {stored[1]}]", ""
    ) == str(first_messages[2].content)
