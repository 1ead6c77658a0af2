"""Scheduling: ragged batches, pool-exhaustion policies (queue; preempt + recompute), cancellation,
deadlines, stop tokens, request validation, sampling."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from deepscout.model_runtime.v4.engine import (
    CapacityError,
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    RequestError,
    SamplingParams,
)
from deepscout.model_runtime.v4.engine.sampling import sample, top_p_filter
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model


def test_sequences_of_different_lengths_decode_together(narrow_model: DeepseekV4Model, eh: Any) -> None:
    prompts = [eh.random_tokens(n, seed=n) for n in (40, 150, 260)]
    config = EngineConfig(num_blocks=16, prefix_caching=False)
    batched = Engine(narrow_model, config)
    together = batched.generate([GenerationRequest(p, max_new_tokens=5) for p in prompts])
    alone_steps = 0
    for prompt, out in zip(prompts, together, strict=True):
        single = Engine(narrow_model, config)
        (ref,) = single.generate([GenerationRequest(prompt, max_new_tokens=5)])
        alone_steps += single.steps
        assert out.token_ids == ref.token_ids and out.finish_reason is FinishReason.LENGTH
    assert batched.steps == 5 < alone_steps  # one prefill step for all three, then shared decode steps


def _two_long_requests(eh: Any, sampling: SamplingParams) -> list[GenerationRequest]:
    # 250 prompt + 12 new tokens = 262 tokens = 3 blocks each; a pool of 4 cannot hold both
    return [
        GenerationRequest(eh.random_tokens(250, seed=s), max_new_tokens=12, sampling=sampling)
        for s in (21, 22)
    ]


@pytest.mark.parametrize(
    "sampling",
    [SamplingParams(), SamplingParams(temperature=1.0, top_p=0.9, seed=5)],
    ids=["greedy", "top_p"],
)
def test_preemption_and_recompute_give_identical_outputs(
    narrow_model: DeepseekV4Model, eh: Any, sampling: SamplingParams
) -> None:
    roomy = Engine(narrow_model, EngineConfig(num_blocks=16, prefix_caching=False))
    expected = roomy.generate(_two_long_requests(eh, sampling))
    tight = Engine(narrow_model, EngineConfig(num_blocks=4, prefix_caching=False, pool_policy="preempt"))
    got = tight.generate(_two_long_requests(eh, sampling))
    assert tight.scheduler.preemptions == 1 and got[1].preemptions == 1
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert got[1].prefilled_tokens > 250  # its prompt and first tokens were computed twice
    assert tight.caches.blocks.num_free == 4


def test_queue_policy_waits_for_blocks_instead_of_preempting(narrow_model: DeepseekV4Model, eh: Any) -> None:
    requests = _two_long_requests(eh, SamplingParams())
    engine = Engine(narrow_model, EngineConfig(num_blocks=4, prefix_caching=False, pool_policy="queue"))
    ids = [engine.add_request(r) for r in requests]
    finished_at: dict[str, int] = {}
    first_token_at: dict[str, int] = {}
    step = 0
    while engine.has_unfinished():
        step += 1
        for out in engine.step():
            first_token_at.setdefault(out.request_id, step)
            if out.finished:
                finished_at[out.request_id] = step
    assert engine.scheduler.preemptions == 0
    assert first_token_at[ids[1]] > finished_at[ids[0]]  # the second waited for the first's blocks
    roomy = Engine(narrow_model, EngineConfig(num_blocks=16, prefix_caching=False))
    assert roomy.generate(_two_long_requests(eh, SamplingParams()))[1].finish_reason is FinishReason.LENGTH


def test_cancel_and_deadline_are_honoured_between_steps(narrow_model: DeepseekV4Model, eh: Any) -> None:
    engine = Engine(narrow_model, EngineConfig(num_blocks=8, prefill_chunk=128))
    cancel = threading.Event()
    rid = engine.add_request(GenerationRequest(eh.random_tokens(300, seed=30), cancel=cancel))
    late = engine.add_request(GenerationRequest([5, 6, 7], deadline=time.monotonic() - 1))
    outs = {o.request_id: o for o in engine.step()}
    assert outs[late].finish_reason is FinishReason.DEADLINE and outs[late].prefilled_tokens == 0
    assert rid not in outs  # first 128-token chunk done, nothing sampled yet
    cancel.set()
    (out,) = engine.step()
    assert out.request_id == rid and out.finish_reason is FinishReason.CANCELLED
    assert out.prefilled_tokens == 128 and out.token_ids == []
    assert not engine.has_unfinished() and engine.caches.states.num_free == engine.config.num_state_slots
    other = engine.add_request(GenerationRequest([9, 9, 9], max_new_tokens=50))
    engine.step()
    engine.cancel(other)
    (out,) = engine.step()
    assert out.finish_reason is FinishReason.CANCELLED and len(out.token_ids) == 1


def test_stop_tokens_and_logprobs(narrow_model: DeepseekV4Model, eh: Any) -> None:
    engine = Engine(narrow_model, EngineConfig(num_blocks=8))
    prompt = eh.random_tokens(50, seed=40)
    greedy = engine.generate([GenerationRequest(prompt, max_new_tokens=6)])[0].token_ids
    stop = greedy[2]
    request = GenerationRequest(
        prompt, max_new_tokens=6, stop_token_ids=[stop], sampling=SamplingParams(logprobs=True)
    )
    out = engine.generate([request])[0]
    assert out.token_ids == greedy[: greedy.index(stop) + 1] and out.finish_reason is FinishReason.STOP
    ref = eh.reference_logits(narrow_model, prompt).log_softmax(-1)[-1, greedy[0]].item()
    assert out.logprobs is not None and abs(out.logprobs[0] - ref) < 1e-4


def test_logits_processor_constrains_sampling(narrow_model: DeepseekV4Model) -> None:
    def only_seven(generated: Any, logits: torch.Tensor) -> torch.Tensor:
        masked = torch.full_like(logits, float("-inf"))
        masked[7] = logits[7]
        return masked

    engine = Engine(narrow_model, EngineConfig(num_blocks=8))
    request = GenerationRequest(
        [3, 4, 5], max_new_tokens=3, sampling=SamplingParams(logits_processor=only_seven)
    )
    assert engine.generate([request])[0].token_ids == [7, 7, 7]


def test_invalid_requests_are_refused(narrow_model: DeepseekV4Model) -> None:
    engine = Engine(narrow_model, EngineConfig(num_blocks=2))
    with pytest.raises(RequestError, match="empty"):
        engine.add_request(GenerationRequest([]))
    with pytest.raises(RequestError, match=r"\[0, 256\)"):
        engine.add_request(GenerationRequest([300]))
    with pytest.raises(CapacityError, match="num_blocks"):
        engine.add_request(GenerationRequest([1] * 200, max_new_tokens=100))
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="num_state_slots"):
        EngineConfig(max_running=4, num_state_slots=2)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_sampling_is_seeded_per_position_and_respects_top_p(impl: KernelImpl) -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [
        SamplingParams(temperature=1.0, seed=1),
        SamplingParams(),
        SamplingParams(temperature=0.7, seed=2),
    ]
    first = sample(logits, params, [10, 10, 10], impl=impl).read()
    assert first == sample(logits, params, [10, 10, 10], impl=impl).read()
    assert first[0][1] == int(logits[1].argmax())
    want = logits.log_softmax(dim=-1)[torch.arange(3), torch.tensor(first[0])]
    torch.testing.assert_close(torch.tensor(first[1], dtype=torch.float32), want, rtol=1e-5, atol=1e-5)
    draws = {sample(logits[:1], params[:1], [p], impl=impl).read()[0][0] for p in range(40)}
    assert len(draws) > 5  # different positions draw different tokens
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = top_p_filter(probs, torch.tensor([0.7]))
    assert torch.allclose(kept, torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    narrow = [SamplingParams(temperature=1.0, top_p=1e-6, seed=s) for s in range(5)]
    tokens, _ = sample(logits[:1].expand(5, -1), narrow, [0] * 5, impl=impl).read()
    assert set(tokens) == {int(logits[0].argmax())}


def test_snapshot_frequency_and_budget_bound_prefix_reuse(narrow_model: DeepseekV4Model, eh: Any) -> None:
    base = eh.random_tokens(300, seed=60)

    def reused(engine: Engine, prompt: list[int]) -> int:
        return engine.generate([GenerationRequest(prompt, max_new_tokens=1)])[0].reused_tokens

    every_other = Engine(narrow_model, EngineConfig(num_blocks=16, snapshot_every=2))
    reused(every_other, base)
    assert len(every_other.caches.snapshots) == 1  # at 256 only, not at 128
    assert reused(every_other, base[:200] + [7] * 20) == 0
    assert reused(every_other, base[:280] + [7] * 20) == 256
    no_budget = Engine(narrow_model, EngineConfig(num_blocks=16, snapshot_budget_bytes=0))
    reused(no_budget, base)
    assert len(no_budget.caches.snapshots) == 0 and reused(no_budget, [*base[:280], 7]) == 0


def test_colliding_block_hashes_never_reuse_foreign_blocks(narrow_model: DeepseekV4Model, eh: Any) -> None:
    colliding = Engine(narrow_model, EngineConfig(num_blocks=16), hash_fn=lambda parent, tokens: 0)
    plain = Engine(narrow_model, EngineConfig(num_blocks=16, prefix_caching=False))
    first, second = eh.random_tokens(300, seed=70), eh.random_tokens(300, seed=71)
    for prompt in (first, second, first[:260] + second[:30]):
        (got,) = colliding.generate([GenerationRequest(prompt, max_new_tokens=3)])
        (want,) = plain.generate([GenerationRequest(prompt, max_new_tokens=3)])
        assert got.token_ids == want.token_ids
        assert got.reused_tokens == (256 if prompt[:256] == first[:256] and prompt is not first else 0)
    assert colliding.caches.blocks.prefix.collisions > 0
    with pytest.raises(ValueError, match=r"EngineConfig\.device"):
        Engine(narrow_model, EngineConfig(device="meta"))
