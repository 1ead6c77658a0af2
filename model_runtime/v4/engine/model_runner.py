"""Runs one scheduled step through the model: a packed ragged batch over the sequences' paged caches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscout.model_runtime.v4.engine.decode_runner import DecodeRunner
from deepscout.model_runtime.v4.engine.scheduler import Chunk
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model


@dataclass
class StepLogits:
    """float32 logits: `sample[i]` `[vocab]` for chunks that sample (None otherwise), and `prompt[i]`
    `[n, vocab]` for prompt positions whose logits were asked for (None otherwise)."""

    sample: list[torch.Tensor | None]
    prompt: list[torch.Tensor | None]


class ModelRunner:
    """Runs a step through the cache protocol (any mix of prefill and decode), or, for pure decode steps on
    the fused kernels, through the device decode step (`decode_runner.py`, CUDA graphs on a GPU)."""

    def __init__(self, model: DeepseekV4Model, decoder: DecodeRunner) -> None:
        self.model = model
        self.device = model.embed.weight.device
        self.decoder = decoder

    @torch.no_grad()
    def run(self, chunks: Sequence[Chunk]) -> StepLogits:
        if self.decoder.handles(chunks):
            decoded = self.decoder.run(chunks)
            no_prompt_logits: list[torch.Tensor | None] = [None] * len(chunks)
            return StepLogits(list(decoded.unbind(0)), no_prompt_logits)
        lengths = [c.length for c in chunks]
        ids = torch.zeros(len(chunks), max(lengths), dtype=torch.long)
        for row, chunk in enumerate(chunks):
            ids[row, : chunk.length] = torch.tensor(chunk.token_ids, dtype=torch.long)
        caches = [c.seq.cache for c in chunks]
        for chunk in chunks:
            assert chunk.seq.cache is not None and chunk.seq.cache.num_tokens == chunk.start
        streams, segments = self.model.forward_streams(ids.to(self.device), caches, lengths)  # type: ignore[arg-type]
        rows: list[int] = []
        spans: list[tuple[int, int, int]] = []  # (prompt rows start, count, sample row) into `rows`
        for chunk, seg in zip(chunks, segments, strict=True):
            first = len(rows)
            lo, hi = self._prompt_positions(chunk)
            rows.extend(seg.offset + p - chunk.start for p in range(lo, hi))
            sample_row = -1
            if chunk.sample:
                sample_row = len(rows)
                rows.append(seg.offset + seg.length - 1)
            spans.append((first, hi - lo, sample_row))
        logits = None
        if rows:
            logits = self.model.logits(streams[torch.tensor(rows, device=streams.device)]).float()
        out = StepLogits([], [])
        for first, count, sample_row in spans:
            assert logits is not None or (count == 0 and sample_row < 0)
            out.prompt.append(logits[first : first + count] if count and logits is not None else None)
            out.sample.append(logits[sample_row] if sample_row >= 0 and logits is not None else None)
        return out

    @staticmethod
    def _prompt_positions(chunk: Chunk) -> tuple[int, int]:
        """Prompt positions of this chunk whose logits the request wants and does not have yet."""
        seq = chunk.seq
        if not seq.request.return_prompt_logits:
            return 0, 0
        lo = max(chunk.start, seq.prompt_logits_upto)
        hi = min(chunk.start + chunk.length, len(seq.prompt))
        return (lo, hi) if hi > lo else (0, 0)
