"""Speculative decoding in the engine (`EngineConfig.speculative="mtp"`): the same tokens as plain decoding
over the paged cache (greedy and seeded sampling, ragged batches crossing block and entry boundaries), the
drafts' acceptance counted per request and per engine, and the MTP layer's cache kept consistent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from deepscout.model_runtime.v4.checkpoint_run import new_sequence_cache
from deepscout.model_runtime.v4.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from deepscout.model_runtime.v4.engine.engine_config import Speculative
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny
from deepscout.model_runtime.v4.mtp_speculation import NoMtpLayerError, speculative_greedy_generate
from tests.model_runtime.v4.conftest import two_token_head

ARGS = tiny(mtp_layer_types=(LayerKind.CSA,))
LENGTHS = (5, 126, 131, 250)  # decoding crosses token 128 (a block, HCA's first entry) for two of them
SAMPLINGS = [SamplingParams(), SamplingParams(temperature=1.0, top_p=0.9, seed=5)]


@pytest.fixture(scope="module")
def model() -> DeepseekV4Model:
    torch.set_num_threads(2)
    return DeepseekV4Model.random(ARGS, seed=0).eval()


@pytest.fixture(scope="module")
def two_token_model(model: DeepseekV4Model) -> DeepseekV4Model:
    return two_token_head(model)


def _requests(eh: Any, sampling: SamplingParams, new: int = 8) -> list[GenerationRequest]:
    return [
        GenerationRequest(eh.random_tokens(n, seed=n), max_new_tokens=new, sampling=sampling) for n in LENGTHS
    ]


def _engine(model: DeepseekV4Model, speculative: Speculative) -> Engine:
    return Engine(model, EngineConfig(num_blocks=16, speculative=speculative))


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "top_p"])
def test_speculative_engine_gives_the_plain_tokens(
    model: DeepseekV4Model, eh: Any, sampling: SamplingParams
) -> None:
    plain = _engine(model, "off").generate(_requests(eh, sampling))
    engine = _engine(model, "mtp")
    spec = engine.generate(_requests(eh, sampling))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert [o.logprobs for o in spec] == [o.logprobs for o in plain]
    assert all(o.drafted_tokens == 6 and 0.0 <= (o.acceptance_rate or 0.0) <= 1.0 for o in spec)
    assert engine.draft_stats.drafted == 6 * len(LENGTHS)
    assert plain[0].drafted_tokens == 0 and plain[0].acceptance_rate is None


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "top_p"])
def test_partly_right_drafts_agree_with_the_contiguous_path(
    two_token_model: DeepseekV4Model, eh: Any, sampling: SamplingParams
) -> None:
    plain = _engine(two_token_model, "off").generate(_requests(eh, sampling, new=16))
    engine = _engine(two_token_model, "mtp")
    spec = engine.generate(_requests(eh, sampling, new=16))
    assert [o.token_ids for o in spec] == [o.token_ids for o in plain]
    assert engine.draft_stats.accepted <= engine.draft_stats.drafted
    if sampling.temperature == 0:  # the MTP layer's paged-side cache drafts what the contiguous path drafts
        assert 0 < engine.draft_stats.accepted < engine.draft_stats.drafted
        for n, out in zip(LENGTHS, spec, strict=True):
            alone = speculative_greedy_generate(
                two_token_model, new_sequence_cache(two_token_model), eh.random_tokens(n, seed=n), 16
            )
            assert alone.new_ids == out.token_ids
            assert (alone.stats.drafted, alone.stats.accepted) == (out.drafted_tokens, out.accepted_tokens)


def test_drafts_forced_right_take_half_the_steps(model: DeepseekV4Model, eh: Any) -> None:
    silent = DeepseekV4Model.random(ARGS, seed=0).eval()
    with torch.no_grad():
        silent.head.weight.zero_()  # every logit 0: the model and its MTP layer both choose token 0
    requests = _requests(eh, SamplingParams(), new=9)
    plain = _engine(silent, "off")
    expected = plain.generate(requests)
    engine = _engine(silent, "mtp")
    spec = engine.generate(_requests(eh, SamplingParams(), new=9))
    assert [o.token_ids for o in spec] == [o.token_ids for o in expected] == [[0] * 9] * len(LENGTHS)
    assert engine.draft_stats.acceptance_rate == 1.0 and all(o.acceptance_rate == 1.0 for o in spec)
    assert engine.steps == plain.steps - 4  # 1 prefill step, then 4 steps of 2 tokens instead of 8 of 1


def test_a_session_turn_drafts_and_grammar_rows_decode_plainly(
    two_token_model: DeepseekV4Model, eh: Any
) -> None:
    def turns(speculative: Speculative) -> list[tuple[list[int], int]]:
        engine = _engine(two_token_model, speculative)
        prompt = eh.random_tokens(60, seed=3)
        (first,) = engine.generate([GenerationRequest(prompt, max_new_tokens=6, session_id="s")])
        follow = [*prompt, *first.token_ids, *eh.random_tokens(5, seed=4)]
        masked: Sequence[GenerationRequest] = [
            GenerationRequest(follow, max_new_tokens=6, session_id="s"),
            GenerationRequest(
                prompt,
                max_new_tokens=6,
                sampling=SamplingParams(logits_processor=lambda generated, logits: logits),
            ),
        ]
        return [(o.token_ids, o.drafted_tokens) for o in [first, *engine.generate(masked)]]

    plain, spec = turns("off"), turns("mtp")
    assert [tokens for tokens, _ in spec] == [tokens for tokens, _ in plain]
    assert spec[0][1] > 0 and spec[1][1] > 0 and spec[2][1] == 0


def test_speculation_needs_an_mtp_layer() -> None:
    no_mtp = DeepseekV4Model.random(tiny(num_nextn_predict_layers=0), seed=0).eval()
    with pytest.raises(NoMtpLayerError, match="needs an MTP layer"):
        _engine(no_mtp, "mtp")
