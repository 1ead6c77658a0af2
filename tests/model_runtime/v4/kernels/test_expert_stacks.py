"""The routed experts keep their official names while their weights stay views into one stacked tensor per
projection, through every way the model is built, moved, converted and loaded."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import cast

import pytest
import torch

from deepscout.model_runtime.v4.model.moe import Expert, RoutedExperts
from deepscout.model_runtime.v4.model.transformer import Block, DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind, tiny

ARGS = tiny((LayerKind.SLIDING, LayerKind.CSA), num_hash_layers=1)
# The loader and the checkpoint writer (safetensors) are imported by the tests that use them, so the GPU test
# here also runs where only torch and Triton are installed.


def _routed(model: torch.nn.Module) -> list[RoutedExperts]:
    found = [m for m in model.modules() if isinstance(m, RoutedExperts)]
    assert found
    return found


def _expert(experts: RoutedExperts, index: int) -> Expert:
    return cast(Expert, experts[index])


def _assert_views(model: torch.nn.Module, dtype: torch.dtype) -> None:
    for experts in _routed(model):
        assert experts.is_stacked()
        stacks, last = experts.stacks, _expert(experts, len(experts) - 1)
        assert stacks.w1.dtype == dtype and stacks.w1.shape == (len(experts), *last.w1.weight.shape)
        assert stacks.w2.shape == (len(experts), *last.w2.weight.shape)
        assert stacks.w3[-1].data_ptr() == last.w3.weight.data_ptr()


def test_official_names_over_stacked_storage() -> None:
    model = DeepseekV4Model.random(ARGS, seed=0)
    _assert_views(model, torch.float32)
    names = set(model.state_dict())
    for e in range(ARGS.n_routed_experts):
        assert {f"layers.1.ffn.experts.{e}.w{i}.weight" for i in (1, 2, 3)} <= names
    assert not any("stacks" in name for name in names)
    experts = _routed(model)[0]
    with torch.no_grad():
        _expert(experts, 3).w2.weight.fill_(0.5)  # an in-place write lands in the stack
    assert bool((experts.stacks.w2[3] == 0.5).all())


def test_cast_and_to_keep_the_views() -> None:
    model = DeepseekV4Model.random(ARGS, seed=0, dtype=torch.bfloat16)
    _assert_views(model, torch.bfloat16)
    bias = cast(Block, model.layers[1]).ffn.gate.bias
    assert bias is not None and bias.dtype == torch.float32  # cast still keeps what it keeps
    model.to(torch.float32)
    _assert_views(model, torch.float32)
    model.cast(torch.bfloat16).to("cpu")
    _assert_views(model, torch.bfloat16)


def test_state_dict_round_trips_keep_the_views() -> None:
    source = DeepseekV4Model.random(ARGS, seed=1)
    state = source.state_dict()
    for assign in (False, True):
        target = DeepseekV4Model(ARGS)
        target.load_state_dict(state, assign=assign)
        _assert_views(target, torch.float32)
        for ours, theirs in zip(_routed(target), _routed(source), strict=True):
            assert torch.equal(ours.stacks.w1, theirs.stacks.w1)
    for duplicate in (copy.deepcopy(source), pickle.loads(pickle.dumps(source))):
        _assert_views(duplicate, torch.float32)
        assert torch.equal(_routed(duplicate)[1].stacks.w2, _routed(source)[1].stacks.w2)


def test_allocation_for_loading_stacks_in_the_target_dtype() -> None:
    from deepscout.model_runtime.v4.weights.loader import allocate_model

    model = allocate_model(ARGS, dtype=torch.bfloat16)
    _assert_views(model, torch.bfloat16)
    assert not any(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("expert_dtype", ["fp4", "fp8"])
def test_a_checkpoint_loads_into_the_stacks(tmp_path: Path, expert_dtype: str) -> None:
    from deepscout.model_runtime.v4.weights.loader import load_model
    from deepscout.model_runtime.v4.weights.synthetic import flash_shaped_small, make_synthetic_checkpoint

    args = flash_shaped_small((LayerKind.SLIDING, LayerKind.CSA), n_routed_experts=4)
    written = make_synthetic_checkpoint(tmp_path, args, seed=2, expert_dtype=expert_dtype)  # type: ignore[arg-type]
    model, _ = load_model(tmp_path)
    _assert_views(model, torch.float32)
    for ours, theirs in zip(_routed(model), _routed(written), strict=True):
        for projection in ("w1", "w2", "w3"):
            assert torch.equal(getattr(ours.stacks, projection), getattr(theirs.stacks, projection))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_moving_to_the_gpu_and_back_keeps_the_views() -> None:
    model = DeepseekV4Model.random(ARGS, seed=0).to("cuda")
    _assert_views(model, torch.float32)
    assert all(experts.stacks.w2.is_cuda for experts in _routed(model))
    model.cast(torch.bfloat16).cpu()
    _assert_views(model, torch.bfloat16)
