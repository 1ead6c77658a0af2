"""Shared fixtures for the DeepSeek-V4 model tests: our model, the transformers oracle with the same weights,
fresh contiguous caches, and the tolerance check (max|diff| <= 1e-4 * max|ref|)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass

import pytest
import torch

from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs
from deepscout.model_runtime.v4.weights.weight_names import to_hf_state_dict

RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def new_cache(
    args: ModelArgs, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> ContiguousSequenceCache:
    return ContiguousSequenceCache(
        [*args.layer_types, *args.mtp_layer_types],
        head_dim=args.head_dim,
        index_head_dim=args.index_head_dim,
        sliding_window=args.sliding_window,
        dtype=dtype,
        device=device,
    )


def build_oracle(model: DeepseekV4Model) -> torch.nn.Module:
    """transformers' DeepseekV4ForCausalLM (eager, float32) holding our model's weights."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    config = DeepseekV4Config(**model.args.to_hf_dict())
    config._attn_implementation = "eager"
    oracle = DeepseekV4ForCausalLM(config).eval()
    weights = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    result = oracle.load_state_dict(to_hf_state_dict(weights), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return oracle


@dataclass
class Pair:
    """Our model and the oracle with identical weights, plus a cache of the oracle's full-prefill logits."""

    args: ModelArgs
    model: DeepseekV4Model
    oracle: torch.nn.Module
    _memo: dict[tuple[int, ...], torch.Tensor]

    def oracle_logits(self, ids: torch.Tensor) -> torch.Tensor:
        key = tuple(ids.flatten().tolist()) + tuple(ids.shape)
        if key not in self._memo:
            with torch.no_grad():
                self._memo[key] = self.oracle(ids).logits
        return self._memo[key]

    def prefill(
        self, ids: torch.Tensor, chunks: Sequence[int] | None = None, *, impl: str = "sparse"
    ) -> torch.Tensor:
        """Our logits for `ids` `[B, S]`, fed in chunks of the given sizes (one chunk when None)."""
        caches = [new_cache(self.args) for _ in range(ids.shape[0])]
        sizes = list(chunks) if chunks else [ids.shape[1]]
        out, start = [], 0
        with torch.no_grad():
            for size in sizes:
                piece = ids[:, start : start + size]
                if piece.shape[1] == 0:
                    break
                out.append(self.model(piece, caches, attn_impl=impl))  # type: ignore[arg-type]
                start += piece.shape[1]
        return torch.cat(out, dim=1)


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = RELATIVE_TOLERANCE) -> float:
    """max|ours - ref| <= rel * max|ref|; returns the measured ratio."""
    assert ours.shape == ref.shape
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert diff <= rel * scale, f"max|diff| {diff:.3e} > {rel:g} * max|ref| {scale:.3e}"
    return diff / scale


@pytest.fixture(scope="module")
def make_pair() -> Callable[[ModelArgs, int], Pair]:
    built: dict[tuple[ModelArgs, int], Pair] = {}

    def make(args: ModelArgs, seed: int = 0) -> Pair:
        key = (args, seed)
        if key not in built:
            torch.set_num_threads(1)
            model = DeepseekV4Model.random(args, seed).eval()
            built[key] = Pair(args, model, build_oracle(model), {})
        return built[key]

    return make


def random_ids(args: ModelArgs, length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, args.vocab_size, (batch, length), generator=gen)


@dataclass(frozen=True)
class Helpers:
    new_cache: Callable[..., ContiguousSequenceCache] = new_cache
    random_ids: Callable[..., torch.Tensor] = random_ids
    assert_close: Callable[..., float] = assert_close


@pytest.fixture(scope="session")
def v4() -> Helpers:
    """The helper functions of this folder (test modules cannot import conftest under importlib mode)."""
    return Helpers()


def two_token_head(model: DeepseekV4Model) -> DeepseekV4Model:
    """A copy of `model` whose (main and MTP) head can only pick token 7 or 9, so MTP drafts are right
    about half the time."""
    copy = deepcopy(model).eval()
    with torch.no_grad():
        row = model.head.weight[7].clone()
        copy.head.weight.zero_()
        copy.head.weight[7], copy.head.weight[9] = row, -row
    return copy
