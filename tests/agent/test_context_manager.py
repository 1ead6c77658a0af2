"""The context manager: whole documents while they fit, the most relevant passages under pressure (with
a record of what was dropped), budgets counted by the model's own token counter."""

from __future__ import annotations

from langchain_core.messages import HumanMessage, SystemMessage

from deepscout.agent.context import ContextManager, DocumentText, documents_in, split_passages

RELEVANT = "Bram Stoker was born in Clontarf, Dublin, in 1847."
FILLER = "The weather report mentions rain, clouds and a mild breeze over the hills today."


def _doc(n: int, text: str, title: str = "Doc") -> DocumentText:
    return DocumentText(n=n, source_id=100 + n, title=f"{title} {n}", url=None, text=text)


def test_documents_enter_whole_while_they_fit(scripted) -> None:
    model = scripted([])
    manager = ContextManager(model, limit_tokens=2000, reserve_tokens=100)
    base = [SystemMessage(content="rules"), HumanMessage(content="Question: where was Stoker born?")]
    placement = manager.add_documents(base, [_doc(1, RELEVANT), _doc(2, FILLER)], "Stoker born")
    assert placement.transcript[:2] == base  # append-only
    assert placement.dropped == [] and not placement.rebuilt
    assert placement.kept_chars == {1: len(RELEVANT), 2: len(FILLER)}
    assert [doc.text for _, doc in documents_in(placement.transcript)] == [RELEVANT, FILLER]


def test_under_pressure_the_most_relevant_passages_are_kept(scripted) -> None:
    model = scripted([])
    long_text = "\n\n".join([FILLER] * 6 + [RELEVANT] + [FILLER] * 6)
    base = [SystemMessage(content="rules"), HumanMessage(content="Question: where was Stoker born?")]
    budget = model.count_tokens(base) + 90
    manager = ContextManager(model, limit_tokens=budget + 50, reserve_tokens=50)
    placement = manager.add_documents(base, [_doc(1, long_text)], "where was Stoker born")
    assert manager.count(placement.transcript) <= manager.available
    ((_, shown),) = documents_in(placement.transcript)
    assert RELEVANT in shown.text
    assert shown.text.count(FILLER) < 12
    (record,) = placement.dropped
    assert record["n"] == 1 and record["passages_dropped"] >= 1
    assert record["chars_dropped"] >= len(FILLER)


def test_pressure_can_shrink_earlier_documents_for_a_better_new_one(scripted) -> None:
    model = scripted([])
    base = [SystemMessage(content="rules"), HumanMessage(content="Question: where was Stoker born?")]
    first = _doc(1, "\n\n".join([FILLER] * 4))
    budget_tokens = model.count_tokens(base) + 70
    manager = ContextManager(model, limit_tokens=budget_tokens, reserve_tokens=0)
    step1 = manager.add_documents(base, [first], "Stoker born")
    assert step1.dropped == []
    step2 = manager.add_documents(step1.transcript, [_doc(2, RELEVANT, "Bram Stoker")], "Stoker born")
    assert step2.rebuilt  # the earlier document turn was rewritten
    assert manager.count(step2.transcript) <= budget_tokens
    shown = {doc.n: doc.text for _, doc in documents_in(step2.transcript)}
    assert shown[2] == RELEVANT
    assert any(record["n"] == 1 for record in step2.dropped)


def test_shrink_to_leaves_room_for_the_answer(scripted) -> None:
    model = scripted([])
    base = [SystemMessage(content="rules"), HumanMessage(content="Q: Stoker birthplace?")]
    manager = ContextManager(model, limit_tokens=10_000, reserve_tokens=0)
    placed = manager.add_documents(base, [_doc(1, "\n\n".join([FILLER] * 10 + [RELEVANT]))], "Stoker born")
    tight = ContextManager(model, limit_tokens=model.count_tokens(base) + 120, reserve_tokens=0)
    instruction = [HumanMessage(content="Answer now.")]
    result = tight.shrink_to(placed.transcript, instruction, 60, "Stoker born")
    assert tight.count([*result.transcript, *instruction]) + 60 <= tight.limit_tokens
    assert RELEVANT in documents_in(result.transcript)[0][1].text


def test_long_paragraphs_split_into_sentence_groups() -> None:
    paragraph = " ".join(["This is a sentence about nothing in particular."] * 40)
    passages = split_passages(paragraph + "\n\nShort one.")
    assert len(passages) > 2
    assert all(len(p) <= 700 for p in passages)
    assert passages[-1] == "Short one."
