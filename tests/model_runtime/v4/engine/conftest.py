"""Shared fixtures for the engine tests: a tiny random V4 model, full-prefill reference logits through the
contiguous cache, and the float32 tolerance check (max|diff| <= 1e-4 * max|ref|)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import torch

from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs, tiny

RELATIVE_TOLERANCE = 1e-4


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def reference_logits(model: DeepseekV4Model, ids: list[int]) -> torch.Tensor:
    """Logits `[len(ids), vocab]` of one full prefill through the contiguous reference cache."""
    args = model.args
    cache = ContiguousSequenceCache(
        args.layer_types,
        head_dim=args.head_dim,
        index_head_dim=args.index_head_dim,
        sliding_window=args.sliding_window,
    )
    with torch.no_grad():
        return model(torch.tensor([ids]), [cache])[0].float()


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float = RELATIVE_TOLERANCE) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = ref.abs().max().item()
    diff = (ours - ref).abs().max().item()
    assert diff <= rel * scale, f"max|diff| {diff:.3e} > {rel:g} * max|ref| {scale:.3e}"
    return diff / scale


def random_tokens(n: int, seed: int, vocab: int = 256) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(2, vocab, (n,), generator=gen).tolist()


@dataclass(frozen=True)
class EngineHelpers:
    reference_logits: Callable[[DeepseekV4Model, list[int]], torch.Tensor] = reference_logits
    assert_close: Callable[..., float] = assert_close
    random_tokens: Callable[..., list[int]] = random_tokens


@pytest.fixture(scope="session")
def eh() -> EngineHelpers:
    """Helper functions of this folder (test modules cannot import conftest under importlib mode)."""
    return EngineHelpers()


@pytest.fixture(scope="session")
def tiny_args() -> ModelArgs:
    """Sliding, CSA and HCA layers with the real window (128) and ratios (4, 128)."""
    return tiny()


@pytest.fixture(scope="session")
def tiny_model(tiny_args: ModelArgs) -> DeepseekV4Model:
    torch.set_num_threads(2)
    return DeepseekV4Model.random(tiny_args, seed=0).eval()


def _probe_module() -> ModuleType:
    """long_context_probe.py (a script run in a subprocess) also defines the narrow config."""
    path = Path(__file__).with_name("long_context_probe.py")
    spec = importlib.util.spec_from_file_location("engine_long_context_probe", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def narrow_model() -> DeepseekV4Model:
    torch.set_num_threads(2)
    args: ModelArgs = _probe_module().narrow_args()  # every width cut down, real window and ratios
    return DeepseekV4Model.random(args, seed=1).eval()
