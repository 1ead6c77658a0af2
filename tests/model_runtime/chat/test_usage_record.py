"""The typed usage record: how a backend puts it on a message and how every reader gets it back."""

from __future__ import annotations

from langchain_core.messages import AIMessage, AIMessageChunk

from deepscout.model_runtime.chat import Usage, load_chat_model, usage_of
from deepscout.model_runtime.chat.usage import usage_fields


def test_usage_adds_and_serialises() -> None:
    first = Usage(prompt_tokens=10, reused_tokens=4, computed_tokens=6, output_tokens=3)
    second = Usage(prompt_tokens=20, reused_tokens=15, computed_tokens=5, output_tokens=2)
    assert first + second == Usage(30, 19, 11, 5)
    assert sum([first, second], Usage()) == first + second
    assert first.as_dict() == {
        "prompt_tokens": 10,
        "reused_tokens": 4,
        "computed_tokens": 6,
        "output_tokens": 3,
    }
    assert first.with_output(7) == Usage(10, 4, 6, 10)


def test_a_message_carries_the_standard_fields_and_the_prefill_counters() -> None:
    usage = Usage(prompt_tokens=12, reused_tokens=8, computed_tokens=4, output_tokens=5)
    message = AIMessage(content="hi", **usage_fields(usage, {"finish_reason": "stop"}))
    assert message.usage_metadata == {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    assert message.response_metadata == {
        "finish_reason": "stop",
        "prefill": {"prompt_tokens": 12, "reused_tokens": 8, "computed_tokens": 4},
    }
    assert usage_of(message) == usage
    # a stored message (a checkpoint written before the record existed) reads back the same
    stored = AIMessage.model_validate_json(message.model_dump_json())
    assert usage_of(stored) == usage
    # and so does the merged stream whose last chunk carried it
    merged = AIMessageChunk(content="h") + AIMessageChunk(content="i", **usage_fields(usage))
    assert usage_of(merged) == usage


def test_messages_of_other_backends() -> None:
    counted = AIMessage(
        content="x", usage_metadata={"input_tokens": 9, "output_tokens": 2, "total_tokens": 11}
    )
    assert usage_of(counted) == Usage(prompt_tokens=9, reused_tokens=0, computed_tokens=9, output_tokens=2)
    assert usage_of(AIMessage(content="x")) == Usage()


def test_only_the_remote_backend_serves_several_threads(settings) -> None:
    assert load_chat_model("openai:some-model", settings=settings).serves_threads_concurrently
