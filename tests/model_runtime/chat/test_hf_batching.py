"""Concurrent calls on one embedded HF model decode together in batched steps, each as it would alone.

A tiny random Llama pins the batch mechanics (ragged rows, joins and leaves, cancellation, deadlines);
the real SmolLM2 (slow) shows the same greedy replies for concurrent and sequential chat calls.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from transformers import LlamaForCausalLM

from deepscout.model_runtime.chat import GenerationCancelled, GenerationDeadlineExceeded, usage_of
from deepscout.model_runtime.chat.backends.embedded_hf import EmbeddedHFChatModel
from deepscout.model_runtime.chat.backends.hf_batch import HFGenerator
from deepscout.model_runtime.chat.exceptions import ChatModelError
from deepscout.model_runtime.chat.interface import GenerationControl

PROMPTS = [[5, 6, 7], [9] * 11, [3, 1, 4, 1, 5, 9, 2, 6], [42], [8, 8, 2, 30, 31, 7]]


def _generator(model: LlamaForCausalLM) -> HFGenerator:
    return HFGenerator(model, eos_token_ids=[], max_sessions=8, prefill_chunk_tokens=4, max_sequences=8)


def _run(generator: HFGenerator, prompt: list[int], tokens: int, **control: object) -> list[int]:
    return generator.generate(prompt, max_new_tokens=tokens, control=GenerationControl(**control)).token_ids  # type: ignore[arg-type]


def test_concurrent_generations_batch_and_match_alone(tiny_llama: LlamaForCausalLM) -> None:
    alone_generator = _generator(tiny_llama)
    alone = [_run(alone_generator, prompt, 12) for prompt in PROMPTS]
    alone_generator.close()

    generator = _generator(tiny_llama)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda prompt: _run(generator, prompt, 12), PROMPTS))
    assert together == alone
    assert generator.steps <= 12 * len(PROMPTS) // 2, generator.steps

    # a second turn continues each conversation's session, in the batch too
    follow = [[*p, *out, 7] for p, out in zip(PROMPTS, alone, strict=True)]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        outcomes = list(
            pool.map(lambda p: generator.generate(p, max_new_tokens=3, control=GenerationControl()), follow)
        )
    assert all(o.usage.reused_tokens >= len(p) - 2 for o, p in zip(outcomes, follow, strict=True))
    generator.close()


def test_a_cancelled_or_late_call_leaves_the_batch_alone(tiny_llama: LlamaForCausalLM) -> None:
    reference = _generator(tiny_llama)
    alone = [_run(reference, prompt, 30) for prompt in PROMPTS[2:]]
    reference.close()

    generator = _generator(tiny_llama)
    cancel = threading.Event()
    seen: list[int] = []

    def cancel_after_three(token: int) -> bool:
        seen.append(token)
        if len(seen) == 3:
            cancel.set()
        return False

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        cancelled = pool.submit(
            generator.generate,
            PROMPTS[0],
            max_new_tokens=30,
            control=GenerationControl(None, cancel),
            on_token=cancel_after_three,
        )
        late = pool.submit(_run, generator, PROMPTS[1], 10_000, deadline=time.monotonic() + 0.3)
        others = [pool.submit(_run, generator, prompt, 30) for prompt in PROMPTS[2:]]
        with pytest.raises(GenerationCancelled, match="decode"):
            cancelled.result()
        with pytest.raises(GenerationDeadlineExceeded):
            late.result()
        assert [future.result() for future in others] == alone
    generator.close()


@pytest.mark.slow
def test_smollm2_concurrent_chat_calls_batch_with_sequential_replies(
    smollm2_chat_model: EmbeddedHFChatModel,
) -> None:
    model = smollm2_chat_model.model_copy(update={"max_new_tokens": 10})
    tag = uuid.uuid4().hex[:8]
    conversations = [
        [SystemMessage(f"You are helper {i} ({tag})."), HumanMessage(f"Name a city, number {i}.")]
        for i in range(6)
    ]
    generator = model.generator
    before = generator.steps
    with ThreadPoolExecutor(len(conversations)) as pool:
        together = list(pool.map(model.invoke, conversations))
    steps = generator.steps - before
    tokens = sum(usage_of(reply).output_tokens for reply in together)
    assert steps <= tokens // 2, f"{steps} decode steps for {tokens} tokens: the calls did not batch"
    sequential = [model.invoke(messages) for messages in conversations]
    assert [r.content for r in together] == [r.content for r in sequential]


def test_a_closed_generator_refuses_calls(tiny_llama: LlamaForCausalLM) -> None:
    """The server's shutdown on an embedded HF model: its thread stops, later calls fail in a line."""
    generator = _generator(tiny_llama)
    assert _run(generator, PROMPTS[0], 2)
    generator.close()
    with pytest.raises(ChatModelError, match="closed"):
        _run(generator, PROMPTS[0], 2)
