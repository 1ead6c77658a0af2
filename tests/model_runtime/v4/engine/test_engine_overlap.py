"""Overlapped decode steps (`EngineConfig.overlap`): each device decode step is launched before the previous
step's tokens are read, its input tokens taken on the device. The outputs are those of reading every
step's tokens first, through stop tokens sampled while the next step is in flight, max_new_tokens, cancels,
a request arriving mid-decode, a logits processor and a session's next turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import torch

from deepscout.model_runtime.v4.engine import (
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    RequestOutput,
    SamplingParams,
)
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny


@pytest.fixture(scope="module")
def model() -> DeepseekV4Model:
    """On the GPU when there is one (decode steps replayed from CUDA graphs, tokens copied back behind
    the next step), else on the CPU under Triton's interpreter."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = tiny((LayerKind.SLIDING, LayerKind.CSA), sliding_window=16)
    model = DeepseekV4Model.random(args, seed=3, device=device).eval()
    model.kernels = "triton"  # the device decode step
    return model


def _config(model: DeepseekV4Model, **overrides: object) -> EngineConfig:
    device = str(model.embed.weight.device)
    return EngineConfig.model_validate({"num_blocks": 32, "device": device, **overrides})


def _prompt(n: int, seed: int) -> list[int]:
    return torch.randint(2, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _not_token_7(output: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
    return logits.index_fill(0, torch.tensor([7], device=logits.device), float("-inf"))


@dataclass
class _Run:
    final: dict[str, RequestOutput] = field(default_factory=dict)
    streamed: dict[str, list[int]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)


def _scenario(model: DeepseekV4Model, *, overlap: bool, stop: int) -> tuple[_Run, Engine]:
    engine = Engine(model, _config(model, prefill_chunk=64, overlap=overlap, max_idle_sessions=2))
    run = _Run()

    def add(request: GenerationRequest) -> str:
        request_id = engine.add_request(request)
        run.ids.append(request_id)
        return request_id

    def step() -> None:
        for out in engine.step():
            run.streamed.setdefault(out.request_id, []).extend(out.new_token_ids)
            if out.finished:
                run.final[out.request_id] = out

    add(GenerationRequest(_prompt(30, 1), max_new_tokens=9, sampling=SamplingParams(logprobs=True)))
    add(GenerationRequest(_prompt(20, 2), max_new_tokens=4, sampling=SamplingParams(0.8, seed=1)))
    stopped = add(GenerationRequest(_prompt(25, 3), max_new_tokens=12, stop_token_ids=[stop]))
    cancelled = add(GenerationRequest(_prompt(22, 4), max_new_tokens=30))
    for _ in range(4):
        step()
    add(GenerationRequest(_prompt(18, 5), max_new_tokens=6, session_id="chat"))  # arrives mid-decode
    step()
    engine.cancel(cancelled)
    while engine.has_unfinished():
        step()
    first_turn = run.final[run.ids[4]]
    follow_up = [*_prompt(18, 5), *first_turn.token_ids, *_prompt(9, 7)]
    add(GenerationRequest(follow_up, max_new_tokens=5, session_id="chat"))
    add(
        GenerationRequest(
            _prompt(16, 6), max_new_tokens=5, sampling=SamplingParams(logits_processor=_not_token_7)
        )
    )
    while engine.has_unfinished():
        step()
    assert run.final[stopped].finish_reason is FinishReason.STOP
    assert run.final[cancelled].finish_reason is FinishReason.CANCELLED
    return run, engine


def test_overlapped_steps_give_the_outputs_of_reading_each_step_first(model: DeepseekV4Model) -> None:
    probe = Engine(model, _config(model, overlap=False))
    tokens = probe.generate([GenerationRequest(_prompt(25, 3), max_new_tokens=12)])[0].token_ids
    stop = next(t for i, t in enumerate(tokens) if i >= 6 and t not in tokens[:i])  # sampled mid-decode

    plain, plain_engine = _scenario(model, overlap=False, stop=stop)
    overlapped, engine = _scenario(model, overlap=True, stop=stop)

    assert engine.overlapped_steps > 0 and plain_engine.overlapped_steps == 0
    assert overlapped.ids == plain.ids
    for request_id in plain.ids:
        got, want = overlapped.final[request_id], plain.final[request_id]
        assert got.token_ids == want.token_ids, request_id
        assert got.finish_reason is want.finish_reason
        assert overlapped.streamed[request_id] == got.token_ids  # streamed once each, in order
        assert min(got.token_ids) >= 0  # no placeholder of a token in flight
    lp_got, lp_want = overlapped.final[plain.ids[0]].logprobs, plain.final[plain.ids[0]].logprobs
    assert lp_got is not None and lp_want is not None
    assert max(abs(a - b) for a, b in zip(lp_got, lp_want, strict=True)) < 1e-4
    assert 7 not in overlapped.final[plain.ids[-1]].token_ids
    # the session's next turn reuses its cache (overlapped: the last token of the turn was processed too)
    turn_two = plain.ids[5]
    assert overlapped.final[turn_two].reused_tokens >= plain.final[turn_two].reused_tokens > 0


def test_preemption_while_a_step_is_in_flight(model: DeepseekV4Model) -> None:
    """Three sequences grow past their first block in a pool of five: the latest admitted is preempted
    (its cache freed, its token still in flight) and recomputed later, with the same tokens."""

    def run(overlap: bool) -> tuple[list[list[int]], int]:
        engine = Engine(model, _config(model, num_blocks=5, prefix_caching=False, overlap=overlap))
        requests = [GenerationRequest(_prompt(124, 20 + i), max_new_tokens=8) for i in range(3)]
        outputs = engine.generate(requests)
        return [o.token_ids for o in outputs], engine.scheduler.preemptions

    plain, plain_preemptions = run(overlap=False)
    overlapped, preemptions = run(overlap=True)
    assert preemptions > 0 and plain_preemptions > 0
    assert overlapped == plain
