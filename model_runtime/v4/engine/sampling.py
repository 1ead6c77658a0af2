"""Token sampling on the logits' device: greedy, or temperature + top-p with per-position seeds.

Sampled rows use the exponential-race form of categorical sampling (argmax of p / E, E ~ Exp(1)), with the
noise drawn from a generator seeded by (request seed, position): the same request at the same position
always draws the same token, which keeps outputs identical when a preempted sequence is recomputed.

The tokens stay on the device (`Drawn.ids`, what a next decode step can take as its inputs) and are copied
to the host behind the step; `Drawn.read` waits for that copy only, not for work queued after it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deepscout.model_runtime.v4.engine.request import SamplingParams
from deepscout.model_runtime.v4.kernels.impl import KernelImpl
from deepscout.model_runtime.v4.kernels.row_max import row_max_logsumexp

_SEED_STRIDE = 1_000_003


def top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Zero the tail of each row outside its nucleus (the smallest set of most likely tokens with mass
    >= top_p; the most likely token is always kept); rows renormalised. `probs` `[B, V]`, `top_p` `[B]`."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(before >= top_p[:, None], 0.0)
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


class Drawn:
    """A step's sampled tokens: `ids` (long `[B]`) on the logits' device, and their copy (with the
    log-probabilities) on its way to the host."""

    def __init__(self, ids: torch.Tensor, logprobs: torch.Tensor) -> None:
        self.ids = ids
        packed = torch.stack([ids.double(), logprobs.double()])  # token ids < 2^53 are exact in float64
        self._ready: torch.cuda.Event | None = None
        if packed.is_cuda:
            self._host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
            self._host.copy_(packed, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = packed

    def read(self) -> tuple[list[int], list[float]]:
        """The token ids and their log-probabilities (waits for their copy, not for later work)."""
        if self._ready is not None:
            self._ready.synchronize()
        tokens, values = self._host.tolist()
        return [int(t) for t in tokens], values


def sample(
    logits: torch.Tensor, params: Sequence[SamplingParams], positions: Sequence[int], *, impl: KernelImpl
) -> Drawn:
    """One token per row of `logits` `[B, V]` (float32) and its log-probability under the model's
    (untempered) distribution. `positions[i]` is the position the sampled token will take. `impl` picks
    the path of the rows' largest logits and log-sum-exps (`kernels/row_max.py`)."""
    device = logits.device
    chosen, lse = row_max_logsumexp(logits, impl=impl)
    if any(p.temperature > 0 for p in params):  # decided on the host: no device round trip
        greedy = torch.tensor([p.temperature == 0 for p in params], device=device)
        temps = torch.tensor([p.temperature or 1.0 for p in params], device=device, dtype=logits.dtype)
        probs = (logits / temps[:, None]).softmax(dim=-1)
        top_p = torch.tensor([p.top_p for p in params], device=device, dtype=logits.dtype)
        probs = top_p_filter(probs, top_p)
        noise = torch.empty_like(probs)
        for row, (p, pos) in enumerate(zip(params, positions, strict=True)):
            if p.temperature > 0:
                gen = torch.Generator(device=device).manual_seed(p.seed * _SEED_STRIDE + pos)
                noise[row].exponential_(generator=gen)
            else:
                noise[row] = 1.0
        sampled = (probs / noise).argmax(dim=-1)
        chosen = torch.where(greedy, chosen, sampled)
    logprobs = logits.gather(1, chosen[:, None]).squeeze(1) - lse
    return Drawn(chosen, logprobs)
