"""Follow-up questions build on the thread's earlier turns; a run can be stopped in the middle of a model
call."""

from __future__ import annotations

import threading
import time

import pytest

from deepscout.agent.api import research
from deepscout.agent.conversation import PriorTurn
from deepscout.model_runtime.chat import GenerationCancelled


def test_a_follow_up_sees_the_earlier_turns(settings, small_corpus, scripted) -> None:
    earlier = [PriorTurn("Who wrote Dracula?", "Bram Stoker wrote Dracula [1].", ["Dracula (novel)"])]
    model = scripted(['{"queries":["Bram Stoker birthplace"]}', '{"next_queries":[]}'] * 3 + ["Dublin [1]."])
    research("Where was he born?", settings=settings, model=model, database=small_corpus, history=earlier)
    first_prompt = "\n".join(str(m.content) for m in model.prompts[0])
    assert "Who wrote Dracula?" in first_prompt and "Bram Stoker wrote Dracula [1]." in first_prompt
    assert "Dracula (novel)" in first_prompt and "<untrusted_data" in first_prompt
    assert first_prompt.index("Who wrote Dracula?") < first_prompt.index("Where was he born?")


def test_cancel_stops_a_model_call_in_progress(settings, small_corpus, scripted) -> None:
    model = scripted(['{"queries":["Dracula author"]}'], delays={0: 30.0})
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    with pytest.raises(GenerationCancelled):
        research("Who wrote Dracula?", settings=settings, model=model, database=small_corpus, cancel=cancel)
    assert time.monotonic() - started < 5
