"""Runs one scheduled step through the model: a packed ragged batch over the sequences' paged caches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from deepscout.model_runtime.v4.engine.decode_runner import DecodeRunner
from deepscout.model_runtime.v4.engine.scheduler import Chunk
from deepscout.model_runtime.v4.model.packing import RowSegment
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model


@dataclass
class StepLogits:
    """float32 logits: `sample[i]` `[vocab]` for chunks that sample (None otherwise), `verify[i]` `[d,
    vocab]` at the positions of chunk i's d drafts (None without drafts), and `prompt[i]` `[n, vocab]` for
    prompt positions whose logits were asked for (None otherwise). On the protocol path also the packed
    final streams of the forward and each chunk's segment in them (what the MTP layer drafts from)."""

    sample: list[torch.Tensor | None]
    prompt: list[torch.Tensor | None]
    verify: list[torch.Tensor | None]
    streams: torch.Tensor | None = None
    segments: list[RowSegment] = field(default_factory=list)


class ModelRunner:
    """Runs a step through the cache protocol (any mix of prefill, decode and verification of drafts), or,
    for pure decode steps on the fused kernels, through the device decode step (`decode_runner.py`, CUDA
    graphs on a GPU) when there is a `decoder` (none with speculative decoding)."""

    def __init__(self, model: DeepseekV4Model, decoder: DecodeRunner | None) -> None:
        self.model = model
        self.device = model.embed.weight.device
        self.decoder = decoder

    @torch.no_grad()
    def run(self, chunks: Sequence[Chunk], drafts: Sequence[Sequence[int]] | None = None) -> StepLogits:
        """The step's logits; `drafts[i]` (default none) are run after chunk i's tokens to be verified."""
        drafts = drafts or [()] * len(chunks)
        if self.decoder is not None and self.decoder.handles(chunks):
            decoded = self.decoder.run(chunks)
            none: list[torch.Tensor | None] = [None] * len(chunks)
            return StepLogits(list(decoded.unbind(0)), none, list(none))
        lengths = [c.length + len(d) for c, d in zip(chunks, drafts, strict=True)]
        ids = torch.zeros(len(chunks), max(lengths), dtype=torch.long)
        for row, (chunk, draft) in enumerate(zip(chunks, drafts, strict=True)):
            ids[row, : lengths[row]] = torch.tensor([*chunk.token_ids, *draft], dtype=torch.long)
        caches = [c.seq.cache for c in chunks]
        for chunk in chunks:
            assert chunk.seq.cache is not None and chunk.seq.cache.num_tokens == chunk.start
        streams, segments = self.model.forward_streams(ids.to(self.device), caches, lengths)  # type: ignore[arg-type]
        rows: list[int] = []
        spans: list[tuple[int, int, int, int]] = []  # (prompt rows start, count, sample row, drafts)
        for chunk, draft, seg in zip(chunks, drafts, segments, strict=True):
            first = len(rows)
            lo, hi = self._prompt_positions(chunk)
            rows.extend(seg.offset + p - chunk.start for p in range(lo, hi))
            sample_row = -1
            if chunk.sample:  # the chunk's last token, then its drafts
                sample_row = len(rows)
                rows.extend(range(seg.offset + chunk.length - 1, seg.offset + seg.length))
            spans.append((first, hi - lo, sample_row, len(draft)))
        logits = None
        if rows:
            logits = self.model.logits(streams[torch.tensor(rows, device=streams.device)]).float()
        out = StepLogits([], [], [], streams, segments)
        for first, count, sample_row, n_drafts in spans:
            assert logits is not None or (count == 0 and sample_row < 0)
            out.prompt.append(logits[first : first + count] if count and logits is not None else None)
            if sample_row < 0 or logits is None:
                out.sample.append(None)
                out.verify.append(None)
                continue
            out.sample.append(logits[sample_row])
            out.verify.append(logits[sample_row + 1 : sample_row + 1 + n_drafts] if n_drafts else None)
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
