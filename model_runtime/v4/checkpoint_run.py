"""Run a DeepSeek-V4 checkpoint directory from Python: load it, prefill a prompt, decode greedily.

This is the plain single-sequence path over a contiguous cache (what ``deepscout v4 run`` calls); the
serving engine with paged caches and batching is built on the same model separately. With
``speculative="mtp"`` the MTP layer drafts and the main model verifies (``mtp_speculation.py``): the same
tokens, with the drafts' acceptance counted.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.contiguous import ContiguousSequenceCache
from deepscout.model_runtime.v4.engine.engine_config import Speculative
from deepscout.model_runtime.v4.model.attention import AttnImpl
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat
from deepscout.model_runtime.v4.mtp_speculation import (
    DraftStats,
    check_mtp,
    speculative_greedy_generate,
)
from deepscout.model_runtime.v4.weights.loader import LoadReport, load_model


class PromptError(DeepscoutError, ValueError):
    """The prompt cannot be fed to this model (empty, or token ids outside its vocabulary)."""


@dataclass(frozen=True)
class GenerationResult:
    """Prompt and generated token ids, the prompt's last-position logits, where the time went, and the
    drafts' counts (None unless speculative)."""

    prompt_ids: list[int]
    new_ids: list[int]
    last_prompt_logits: torch.Tensor
    load: LoadReport
    prefill_seconds: float
    decode_seconds: float
    draft_stats: DraftStats | None = None


def new_sequence_cache(model: DeepseekV4Model) -> ContiguousSequenceCache:
    """An empty cache for one sequence on the model's device, covering the main layers and the MTP
    layers."""
    args = model.args
    return ContiguousSequenceCache(
        [*args.layer_types, *args.mtp_layer_types],
        head_dim=args.head_dim,
        index_head_dim=args.index_head_dim,
        sliding_window=args.sliding_window,
        dtype=model.dtype,
        device=model.embed.weight.device,
    )


def check_prompt(vocab: int, prompt_ids: Sequence[int]) -> None:
    if not prompt_ids:
        raise PromptError("the prompt is empty; give at least one token id")
    bad = [t for t in prompt_ids if not 0 <= t < vocab]
    if bad:
        raise PromptError(f"token ids {bad[:8]} are outside this model's vocabulary [0, {vocab})")


def greedy_generate(
    model: DeepseekV4Model,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    stop_ids: Sequence[int] = (),
) -> tuple[list[int], torch.Tensor, float, float]:
    """(new ids, last prompt logits, prefill s, decode s): one prefill, then one token per step until
    ``max_new_tokens`` or a stop id (included in the output)."""
    check_prompt(model.args.vocab_size, prompt_ids)
    cache = new_sequence_cache(model)
    new_ids: list[int] = []
    with torch.no_grad():
        start = time.perf_counter()
        logits = model(torch.tensor([list(prompt_ids)]), [cache], last_only=True)[0]
        prefill_seconds = time.perf_counter() - start
        last_prompt_logits = logits.float()
        start = time.perf_counter()
        while len(new_ids) < max_new_tokens:
            token = int(logits.argmax())
            new_ids.append(token)
            if token in stop_ids or len(new_ids) == max_new_tokens:
                break
            logits = model(torch.tensor([[token]]), [cache], last_only=True)[0]
        decode_seconds = time.perf_counter() - start
    return new_ids, last_prompt_logits, prefill_seconds, decode_seconds


def run_checkpoint(
    directory: str | Path,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int = 16,
    dtype: torch.dtype = torch.float32,
    attn_impl: AttnImpl = "sparse",
    stop_at_eos: bool = True,
    weights: WeightFormat = "dense",
    speculative: Speculative = "off",
) -> GenerationResult:
    """Load ``directory`` (its FP8/MXFP4 weights dequantised, or as shipped) and generate greedily from
    ``prompt_ids`` (checked against config.json first), with MTP drafts when ``speculative="mtp"``."""
    args = ModelArgs.from_json(directory)
    check_prompt(args.vocab_size, prompt_ids)
    if speculative == "mtp":
        check_mtp(args)  # before loading the weights
    model, report = load_model(directory, dtype=dtype, attn_impl=attn_impl, weights=weights)
    eos = model.args.eos_token_id
    stop = (eos,) if stop_at_eos and eos is not None else ()
    stats = None
    if speculative == "mtp":
        result = speculative_greedy_generate(
            model, new_sequence_cache(model), prompt_ids, max_new_tokens, stop_ids=stop
        )
        new_ids, last_logits, stats = result.new_ids, result.last_prompt_logits, result.stats
        prefill_s, decode_s = result.prefill_seconds, result.decode_seconds
    else:
        new_ids, last_logits, prefill_s, decode_s = greedy_generate(
            model, prompt_ids, max_new_tokens, stop_ids=stop
        )
    return GenerationResult(
        prompt_ids=list(prompt_ids),
        new_ids=new_ids,
        last_prompt_logits=last_logits,
        load=report,
        prefill_seconds=prefill_s,
        decode_seconds=decode_s,
        draft_stats=stats,
    )
