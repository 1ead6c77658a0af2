"""Expert parallelism end to end over 2 ranks (gloo on CPU; NCCL on 2 GPUs): launched from a checkpoint
directory (or from random weights each rank draws), rank 0 serving, the logits and the greedy and seeded
tokens are the single-process engine's, the routed experts shared out by units or by whole experts; cancels
and deadlines stop requests on every rank at the same step; a world size the experts or their units do not
share out over is refused before any process starts."""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from deepscout.model_runtime.v4.engine import (
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    SamplingParams,
)
from deepscout.model_runtime.v4.model.moe import MoeSharding
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import WeightFormat, flash_shaped
from deepscout.model_runtime.v4.parallel.expert_sharding import random_sharded_model
from deepscout.model_runtime.v4.parallel.launcher import (
    CheckpointSource,
    LaunchSpec,
    ModelSource,
    RandomSource,
    launch,
)
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup
from deepscout.model_runtime.v4.weights.loader import load_model
from deepscout.model_runtime.v4.weights.synthetic import write_checkpoint
from tests.model_runtime.v4.conftest import new_cache, two_token_head
from tests.model_runtime.v4.parallel.conftest import ARGS, PROMPT

_EXPERT = re.compile(r"(.+\.experts\.)(\d+)(\..+)")
CONFIG = EngineConfig(num_blocks=16, prefix_caching=False, cuda_graphs=False)


def _requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(prompt_ids=PROMPT, max_new_tokens=6, return_prompt_logits=True),
        GenerationRequest(prompt_ids=PROMPT[:17], max_new_tokens=5, sampling=SamplingParams(0.8, seed=3)),
    ]


def _spec(
    source: ModelSource,
    tmp_path: Path,
    devices: tuple[str, ...],
    weights: WeightFormat,
    moe_sharding: MoeSharding = "units",
) -> LaunchSpec:
    engine = CONFIG.model_copy(update={"cuda_graphs": devices[0].startswith("cuda")})
    return LaunchSpec(
        source=source,
        devices=devices,
        engine=engine,
        rendezvous=tmp_path / "rendezvous",
        weights=weights,
        moe_sharding=moe_sharding,
        timeout_s=120,
        cpu_threads=1,
    )


def _check_against_single_process(spec: LaunchSpec) -> None:
    device = torch.device(spec.devices[0])
    assert isinstance(spec.source, CheckpointSource)
    single, _ = load_model(spec.source.directory, weights=spec.weights)
    single = single.to(device)
    with torch.no_grad():
        forward = single(torch.tensor([PROMPT], device=device), [new_cache(ARGS, device=device)])[0].float()
    expected = Engine(single, spec.engine.model_copy(update={"device": spec.devices[0]})).generate(
        _requests()
    )
    del single
    with launch(spec) as launched:
        got = launched.engine.generate(_requests())
        cancelled = GenerationRequest(prompt_ids=PROMPT, max_new_tokens=50, cancel=threading.Event())
        late = GenerationRequest(prompt_ids=PROMPT, max_new_tokens=50, deadline=time.monotonic() - 1)
        ids = [launched.engine.add_request(r) for r in (cancelled, late)]
        stopped = {out.request_id: out.finish_reason for out in launched.engine.step() if out.finished}
        assert cancelled.cancel is not None
        cancelled.cancel.set()
        while launched.engine.has_unfinished():
            stopped |= {out.request_id: out.finish_reason for out in launched.engine.step() if out.finished}
    assert stopped == {ids[0]: FinishReason.CANCELLED, ids[1]: FinishReason.DEADLINE}
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert got[0].prompt_logits is not None and expected[0].prompt_logits is not None
    torch.testing.assert_close(got[0].prompt_logits.cpu(), forward.cpu(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got[0].prompt_logits, expected[0].prompt_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("moe_sharding", ["units", "experts"])
@pytest.mark.parametrize("weights", ["dense", "shipped"])
def test_two_ranks_on_gloo_match_one_process(
    checkpoint_dir: Path, tmp_path: Path, weights: WeightFormat, moe_sharding: MoeSharding
) -> None:
    devices = ("cpu", "cpu")
    _check_against_single_process(
        _spec(CheckpointSource(checkpoint_dir), tmp_path, devices, weights, moe_sharding)
    )


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_ranks_on_nccl_match_one_process(checkpoint_dir: Path, tmp_path: Path) -> None:
    _check_against_single_process(
        _spec(CheckpointSource(checkpoint_dir), tmp_path, ("cuda:0", "cuda:1"), "shipped")
    )


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_real_width_layers_load_sharded_on_two_gpus(tmp_path: Path) -> None:
    """Three V4-Flash layers at real width (8 routed experts, a small vocabulary), written in the official
    format and loaded sharded in the shipped formats over NCCL, each rank computing half the query heads,
    half the shared expert and half the vocabulary: the prompt's logits are those of the whole checkpoint in
    one process, dequantised, and so are the greedy tokens of the decode steps (the device decode step,
    replayed from CUDA graphs) and their log-probabilities."""
    args = dataclasses.replace(flash_shaped(3), n_routed_experts=8, vocab_size=4096)
    write_checkpoint(
        DeepseekV4Model.random(args, seed=5, device="cuda"), tmp_path / "ckpt", max_shard_bytes=1 << 30
    )
    prompt = PROMPT * 8
    request = GenerationRequest(
        prompt_ids=prompt, max_new_tokens=4, return_prompt_logits=True, sampling=SamplingParams(logprobs=True)
    )
    single, _ = load_model(tmp_path / "ckpt")
    single = single.to("cuda:0")
    with torch.no_grad():
        expected = single(torch.tensor([prompt], device="cuda:0"), [new_cache(args, device="cuda:0")])[
            0
        ].float()
    (whole,) = Engine(single, CONFIG.model_copy(update={"device": "cuda:0", "cuda_graphs": True})).generate(
        [request]
    )
    del single
    spec = _spec(CheckpointSource(tmp_path / "ckpt"), tmp_path, ("cuda:0", "cuda:1"), "shipped")
    with launch(spec) as launched:
        assert launched.engine.engine.model.layers[0].attn.heads == slice(0, 32)
        (got,) = launched.engine.generate([request])
    assert got.prompt_logits is not None
    torch.testing.assert_close(got.prompt_logits.float(), expected, rtol=2e-3, atol=2e-3)
    assert got.token_ids == whole.token_ids
    torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(whole.logprobs), rtol=2e-3, atol=2e-3)


def test_random_weights_run_as_the_model_their_shards_make_up(tmp_path: Path) -> None:
    """Each rank draws its shard (whole experts) on its device; together they are one model, which EP runs
    exactly."""
    devices = ("cpu", "cpu")
    spec = _spec(RandomSource(ARGS, seed=4), tmp_path, devices, "dense", "experts")
    whole = DeepseekV4Model(ARGS)
    state: dict[str, torch.Tensor] = {}
    for rank in range(2):
        group = RankGroup(rank=rank, world_size=2, device=torch.device("cpu"), backend="gloo")
        shard = random_sharded_model(ARGS, group, seed=4, moe_sharding="experts")
        for name, value in shard.state_dict().items():
            held = _EXPERT.fullmatch(name)
            state[name if held is None else f"{held[1]}{int(held[2]) + 4 * rank}{held[3]}"] = value
    whole.load_state_dict(state)
    expected = Engine(whole, CONFIG).generate(_requests())
    with launch(spec) as launched:
        got = launched.engine.generate(_requests())
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert got[0].prompt_logits is not None and expected[0].prompt_logits is not None
    torch.testing.assert_close(got[0].prompt_logits, expected[0].prompt_logits, rtol=1e-4, atol=1e-4)


def _forced_first_tokens(generated: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
    """A stateful-looking grammar stand-in: the first two tokens must be 7, then anything."""
    if len(generated) >= 2:
        return logits
    masked = torch.full_like(logits, float("-inf"))
    masked[7] = 0.0
    return masked


@pytest.mark.parametrize(
    "devices",
    [
        ("cpu", "cpu"),
        pytest.param(
            ("cuda:0", "cuda:1"),
            marks=[
                pytest.mark.gpu,
                pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices"),
            ],
        ),
    ],
)
def test_a_logits_processor_runs_on_rank_0_and_every_rank_takes_its_tokens(
    checkpoint_dir: Path, tmp_path: Path, devices: tuple[str, str]
) -> None:
    """The tokens after the forced ones match one process's only if every rank's cache holds the forced
    tokens too (each rank's forward feeds its own cache's tokens into the shared all-reduce). On the GPUs
    the other request's steps run overlapped once the processor's request has finished (device decode
    steps, their tokens agreed after the next step took them)."""
    spec = _spec(CheckpointSource(checkpoint_dir), tmp_path, devices, "dense")
    requests = [
        GenerationRequest(
            prompt_ids=PROMPT,
            max_new_tokens=6,
            sampling=SamplingParams(logits_processor=_forced_first_tokens),
        ),
        GenerationRequest(prompt_ids=PROMPT[:17], max_new_tokens=12),
    ]
    single = load_model(checkpoint_dir)[0].to(devices[0])
    expected = Engine(single, spec.engine.model_copy(update={"device": devices[0]})).generate(requests)
    del single
    with launch(spec) as launched:
        got = launched.engine.generate(requests)
        overlapped = launched.engine.engine.overlapped_steps
    assert got[0].token_ids[:2] == [7, 7]
    assert [o.token_ids for o in got] == [o.token_ids for o in expected]
    assert overlapped > 0 if devices[0].startswith("cuda") else overlapped == 0


def test_speculative_decoding_runs_on_every_rank_as_in_one_process(tmp_path: Path) -> None:
    """MTP drafts, verification and rollbacks stay in lockstep: tokens and draft counts are one process's,
    and the tokens are plain decoding's."""
    write_checkpoint(
        two_token_head(DeepseekV4Model.random(ARGS, seed=3)), tmp_path / "ckpt", max_shard_bytes=1 << 20
    )
    spec = _spec(CheckpointSource(tmp_path / "ckpt"), tmp_path, ("cpu", "cpu"), "dense")
    spec = dataclasses.replace(spec, engine=spec.engine.model_copy(update={"speculative": "mtp"}))
    requests = [
        GenerationRequest(prompt_ids=PROMPT, max_new_tokens=12),
        GenerationRequest(prompt_ids=PROMPT[:17], max_new_tokens=9, sampling=SamplingParams(0.8, seed=3)),
    ]
    expected = Engine(load_model(tmp_path / "ckpt")[0], spec.engine).generate(requests)
    plain_config = spec.engine.model_copy(update={"speculative": "off"})
    plain = Engine(load_model(tmp_path / "ckpt")[0], plain_config).generate(requests)
    with launch(spec) as launched:
        got = launched.engine.generate(requests)
    assert [o.token_ids for o in got] == [o.token_ids for o in expected] == [o.token_ids for o in plain]
    assert [(o.drafted_tokens, o.accepted_tokens) for o in got] == [
        (o.drafted_tokens, o.accepted_tokens) for o in expected
    ]
    assert sum(o.drafted_tokens for o in got) > 0


def test_a_world_size_that_does_not_divide_the_experts_is_refused(
    checkpoint_dir: Path, tmp_path: Path
) -> None:
    spec = _spec(CheckpointSource(checkpoint_dir), tmp_path, ("cpu", "cpu", "cpu"), "dense", "experts")
    with pytest.raises(ValueError, match=r"n_routed_experts \(8\) divisible by the world size \(3\)"):
        launch(spec)


@pytest.mark.parametrize(
    ("devices", "weights", "why"),
    [
        (("cpu",) * 3, "dense", r"moe_intermediate_size \(64\) to split into 3 equal shares$"),
        (("cpu",) * 4, "shipped", r"into 4 equal shares of whole 32-wide MXFP4 blocks"),
    ],
)
def test_a_world_size_the_units_do_not_share_out_over_is_refused(
    checkpoint_dir: Path, tmp_path: Path, devices: tuple[str, ...], weights: WeightFormat, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        launch(_spec(CheckpointSource(checkpoint_dir), tmp_path, devices, weights))
