"""Request checkpoints: prefill ends a chunk at the snapshot boundary below each, so a later prompt that
diverges there reuses the prefix up to it (and still matches a fresh full prefill)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, RequestError
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model


def _run(engine: Engine, prompt: list[int], checkpoints: Sequence[int] = ()) -> Any:
    request = GenerationRequest(prompt, max_new_tokens=2, return_prompt_logits=True, checkpoints=checkpoints)
    return engine.generate([request])[0]


@pytest.mark.parametrize(
    ("snapshot_every", "chunk", "checkpoints", "reused"),
    [
        (1, 256, (), 256),  # only chunk ends are snapshotted: 256, 512 (the cut before the last token: 640)
        (1, 256, (420,), 384),  # the chunk from 256 stops at 384, the block boundary below 420
        (1, 256, (420, 30, 700), 384),  # checkpoints below a block or at the prompt's end cut nothing more
        (2, 768, (), 0),  # one chunk, cut at the snapshot boundary before the last token: 512
        (2, 768, (420,), 256),  # the snapshot boundary (every 256 tokens) below 420
    ],
)
def test_a_prompt_diverging_at_a_checkpoint_reuses_the_prefix_up_to_it(
    tiny_model: DeepseekV4Model,
    eh: Any,
    snapshot_every: int,
    chunk: int,
    checkpoints: tuple[int, ...],
    reused: int,
) -> None:
    config = EngineConfig.model_validate(
        {"prefill_chunk": chunk, "num_blocks": 32, "snapshot_every": snapshot_every}
    )
    engine = Engine(tiny_model, config)
    first_prompt = eh.random_tokens(700, seed=20)
    first = _run(engine, first_prompt, checkpoints)
    eh.assert_close(first.prompt_logits, eh.reference_logits(tiny_model, first_prompt))
    later_prompt = first_prompt[:420] + eh.random_tokens(60, seed=21)  # diverges at 420
    later = _run(engine, later_prompt)
    assert later.reused_tokens == reused
    assert later.prefilled_tokens == len(later_prompt) - reused
    eh.assert_close(later.prompt_logits, eh.reference_logits(tiny_model, later_prompt)[reused:])


@pytest.mark.parametrize(("prefix_caching", "first_chunk"), [(True, 128), (False, 300)])
def test_checkpoints_cut_chunks_only_with_prefix_caching(
    tiny_model: DeepseekV4Model, eh: Any, prefix_caching: bool, first_chunk: int
) -> None:
    config = EngineConfig.model_validate(
        {"prefill_chunk": 512, "num_blocks": 32, "prefix_caching": prefix_caching}
    )
    engine = Engine(tiny_model, config)
    engine.add_request(GenerationRequest(eh.random_tokens(300, seed=22), checkpoints=[200]))
    assert [chunk.length for chunk in engine.scheduler.schedule()] == [first_chunk]


@pytest.mark.parametrize("checkpoints", [[-1], [4], [0, 2, 9]])
def test_a_checkpoint_outside_the_prompt_is_refused(checkpoints: list[int]) -> None:
    request = GenerationRequest([5, 6, 7], checkpoints=checkpoints)
    with pytest.raises(RequestError, match=r"checkpoints must be prompt positions in \[0, 3\]"):
        request.validate(vocab_size=256)


def test_checkpoints_at_the_prompt_ends_are_accepted() -> None:
    GenerationRequest([5, 6, 7], checkpoints=[0, 3]).validate(vocab_size=256)
