"""The harness over the OpenAI-compatible backend: both systems and the pairwise judge talk HTTP to a
real chat-completions server on loopback (``eval_chat_server`` in this folder's conftest), on three
HotpotQA questions. What the harness stores is checked against what the server saw and reported."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from deepscout.agent.options import Budgets
from deepscout.evals.datasets import load_dataset
from deepscout.evals.report import write_report
from deepscout.evals.runner import EvalOptions, run_eval
from deepscout.evals.store import load_run
from deepscout.memory.db import open_database
from deepscout.settings import OpenAISettings, Settings

ITEMS = 3


def test_agent_rag_and_judge_over_the_openai_backend(
    hotpotqa_dir: Path, settings: Settings, eval_chat_server: Any, tmp_path: Path
) -> None:
    server = eval_chat_server
    openai = OpenAISettings(base_url=server.url, api_key="test-key", max_retries=0, timeout_s=30)
    settings = settings.model_copy(update={"openai": openai})
    questions = [item.question for item in load_dataset(hotpotqa_dir).items[:ITEMS]]
    server.position_biased.add(questions[-1])  # the judge picks "A" in both orders: a flip, so a tie
    options = EvalOptions(
        dataset=hotpotqa_dir,
        model="openai:test-model",
        judge="openai:test-model",
        limit=ITEMS,
        concurrency=2,
        budgets=Budgets(max_steps=2, max_tool_calls=12, wall_time_s=60),
        answer_max_tokens=64,
    )
    outcome = run_eval(options, settings=settings)
    assert server.refused == []
    assert outcome.failures == []
    assert (outcome.items, outcome.answered, outcome.judged) == (ITEMS, 2 * ITEMS, ITEMS)

    db = open_database(settings)
    with db.session_factory() as session:
        run, items, answers, verdicts = load_run(session, run_id=outcome.run_id)
        manifest = dict(run.manifest)
    db.dispose()
    assert [item.question for item in items] == questions

    # Answers for both systems, written by the server from the documents each system read.
    by_key = {(a.item_id, a.system): a for a in answers}
    assert set(by_key) == {(item.id, s) for item in items for s in ("agent", "rag")}
    for item in items:
        agent, rag = by_key[(item.id, "agent")], by_key[(item.id, "rag")]
        assert agent.answer == f"From the research: {agent.sources[0].title} [1]."
        assert rag.answer == f"From the passages: {rag.sources[0].title} [1]."
        assert agent.read_doc_ids and rag.read_doc_ids

    # Usage is the server's: each system's stored tokens are the sums of what the server reported for
    # that question's requests (the cache hits it reported are not counted as computed).
    served: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for request in server.requests:
        system = "rag" if request.role == "rag_answer" else "judge" if request.role == "judge" else "agent"
        served[(request.question, system)].append(request)
    for item in items:
        for system in ("agent", "rag"):
            usage = by_key[(item.id, system)].usage
            requests = served[(item.question, system)]
            assert usage.prompt_tokens == sum(r.prompt_tokens for r in requests) > 0
            assert usage.computed_tokens == sum(r.prompt_tokens - r.cached_tokens for r in requests)
            assert usage.output_tokens == sum(r.completion_tokens for r in requests) > 0
        roles = sorted(r.role for r in served[(item.question, "agent")])
        assert roles == ["agent_answer", "plan", "reflect"]
        assert by_key[(item.id, "agent")].usage.tool_calls >= 2  # a search and a read at least
        assert by_key[(item.id, "rag")].usage.tool_calls == 1

    # The judge saw every pair twice, the second time swapped, through a forced tool call.
    for item in items:
        judged = served[(item.question, "judge")]
        assert len(judged) == 2
        first, second = (r.answers for r in judged)
        assert first == (by_key[(item.id, "agent")].answer, by_key[(item.id, "rag")].answer)
        assert second == (first[1], first[0])
    outcomes = {
        v.item_id: (v.outcome, v.order_flip, v.winner_first_as_a, v.winner_first_as_b) for v in verdicts
    }
    assert outcomes == {
        items[0].id: ("win", False, "A", "B"),
        items[1].id: ("win", False, "A", "B"),
        items[2].id: ("tie", True, "A", "A"),
    }

    files = write_report(
        out_dir=tmp_path / "report", manifest=manifest, items=items, answers=answers, verdicts=verdicts
    )
    page = files.html.read_text()
    assert all(item.question in page for item in items)
    assert "openai:test-model" in page and "Cost per question" in page
    markdown = files.markdown.read_text()
    assert "| all | 3 | 66.7% [" in markdown
    rows = [line.split(" | ")[0] for line in markdown.splitlines() if line.startswith("| ") and " / " in line]
    assert rows == ["| easy / objective", "| medium / objective", "| hard / objective"]  # the paper's order
    assert "agent as A, judge picked A: A is better supported." in page
    assert {p.name for p in files.charts} == {"pairwise.png", "cost.png"}
