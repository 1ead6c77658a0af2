"""The HF generator's KV sessions under concurrency: pool sized to the batch, cross-call prefix copies,
and prefill forwards that compute only the last position's logits.

A tiny random Llama pins the mechanics; the real SmolLM2 (slow) shows a copied system-prompt prefix
decoding exactly as a freshly computed one."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from deepscout.model_runtime.chat.backends.embedded_hf import EmbeddedHFChatModel
from deepscout.model_runtime.chat.backends.hf_batch import SESSION_BYTES_PER_SEQUENCE, HFGenerator
from deepscout.model_runtime.chat.backends.hf_session import common_prefix_length
from deepscout.model_runtime.chat.embedded_base import GenerationOutcome
from deepscout.model_runtime.chat.interface import GenerationControl
from deepscout.settings import HFSettings

SHARED = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]


def test_the_pool_follows_the_batch_size_unless_limits_are_given(tiny_llama: LlamaForCausalLM) -> None:
    fields = EmbeddedHFChatModel.fields_from(HFSettings(max_sequences=4))
    assert fields["max_sessions"] is None and fields["session_memory_mb"] is None
    sized = HFGenerator(tiny_llama, eos_token_ids=[], max_sequences=4)
    assert sized.pool.max_sessions == 8 and sized.pool.max_bytes == 4 * SESSION_BYTES_PER_SEQUENCE
    given = HFGenerator(tiny_llama, eos_token_ids=[], max_sequences=4, max_sessions=3, session_bytes=1000)
    assert given.pool.max_sessions == 3 and given.pool.max_bytes == 1000
    with pytest.raises(ValueError, match="max_sequences"):
        HFGenerator(tiny_llama, eos_token_ids=[], max_sequences=0)


def test_prefill_chunks_compute_only_the_last_positions_logits(tiny_llama: LlamaForCausalLM) -> None:
    shapes: list[tuple[int, ...]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> None:
        shapes.append((*kwargs["input_ids"].shape, output.logits.shape[1]))

    hook = tiny_llama.register_forward_hook(record, with_kwargs=True)
    generator = HFGenerator(tiny_llama, eos_token_ids=[], prefill_chunk_tokens=4)
    try:
        generator.generate(list(range(1, 11)), max_new_tokens=2, control=GenerationControl())
    finally:
        hook.remove()
        generator.close()
    assert shapes[:3] == [(1, 4, 1), (1, 4, 1), (1, 2, 1)]  # ten prompt tokens in chunks of four
    times = generator.forward_times()
    assert times.prefill_tokens == 10 and times.prefill_forwards == 3 and times.decode_steps == 1
    assert times.prefill_seconds > 0 and times.decode_seconds > 0


def _decode_while_holding(
    generator: HFGenerator, threads: ThreadPoolExecutor, prompt: list[int], done: threading.Event
) -> Future[GenerationOutcome]:
    """Start a call decoding (its KV a row of the batch) until ``done``; returns once it decodes."""
    decoding = threading.Event()

    def until_done(token: int) -> bool:
        decoding.set()
        return done.is_set()

    future = threads.submit(
        generator.generate, prompt, max_new_tokens=1000, control=GenerationControl(), on_token=until_done
    )
    assert decoding.wait(timeout=30)
    return future


def _second_call_reuses_the_decoding_prefix(model: Any, first: list[int], second: list[int]) -> None:
    """``second`` starts from a copy of ``first``'s KV prefix (a padded row of the batch) and decodes
    exactly as it does alone."""
    alone = HFGenerator(model, eos_token_ids=[], prefill_chunk_tokens=4)
    expected = alone.generate(second, max_new_tokens=6, control=GenerationControl()).token_ids
    alone.close()

    generator = HFGenerator(model, eos_token_ids=[], prefill_chunk_tokens=4)
    done = threading.Event()
    with ThreadPoolExecutor(2) as threads:
        longer = _decode_while_holding(
            generator, threads, [40 + i % 20 for i in range(60)], done
        )  # pads the donor row
        donor = _decode_while_holding(generator, threads, first, done)
        outcome = generator.generate(second, max_new_tokens=6, control=GenerationControl())
        done.set()
        assert longer.result().finish_reason == donor.result().finish_reason == "stop"
    generator.close()
    assert outcome.usage.reused_tokens == common_prefix_length(first, second) > 0
    assert outcome.token_ids == expected


def test_a_call_starts_from_the_prefix_of_a_call_still_decoding(tiny_llama: LlamaForCausalLM) -> None:
    _second_call_reuses_the_decoding_prefix(tiny_llama, [*SHARED, 1, 2], [*SHARED, 3, 4, 5])


@pytest.mark.slow
def test_smollm2_shares_a_system_prompt_with_a_call_still_decoding(
    smollm2_chat_model: EmbeddedHFChatModel,
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_chat_model.model_path, local_files_only=True)
    shared = tokenizer("<|im_start|>system\nYou answer questions about cities, briefly.<|im_end|>\n")[
        "input_ids"
    ]
    ask = [
        tokenizer(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n")["input_ids"]
        for q in ("Paris?", "Rome?")
    ]
    _second_call_reuses_the_decoding_prefix(
        smollm2_chat_model.generator.model, [*shared, *ask[0]], [*shared, *ask[1]]
    )
