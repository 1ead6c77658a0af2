"""Decode steps on the device: the model's `decode` over the engine's storage, replayed from CUDA graphs.

A step qualifies when every scheduled chunk is one token of a sequence already past its prompt (no prompt
logits wanted) and the model runs its fused kernels; the kernels read and write the compressed entries in the
pool's storage format (plain rows, or the paper layout's FP8/BF16 and MXFP4). Then the step's inputs are three
`[B]` vectors (token ids, positions, state slots) and the rows' block tables; nothing in the step reads back
to the host. A step's input tokens can also be the previous step's samples, still on the device
(`CarriedTokens`: the engine launches a step before it reads the tokens of the one before).

Graphs: on CUDA, the first step of a (batch size, block-table width) shape runs eagerly (it compiles the
kernels and warms the libraries up) and is then captured; later steps of that shape copy their inputs into
the graph's static buffers and replay it. Block tables are padded to one of eight widths per doubling
(`bucket_width`), so a growing context needs eight graphs per doubling, not one per block, and the kernels
sized by the width (indexer scoring, top-k, the HCA splits) do at most 12.5% more work than the context needs
(a power-of-two width cost up to 2x just past each doubling: 1M tokens + 1 padded to 2M).

A step is captured as one graph, from the embedding to the logits. It was once captured in parts (the
first layer, then four layers a part) so that the GPU could start while the host launched the rest; with
the layers' side streams every boundary between parts drains all of them and drops the programmatic
launch overlap of the kernels across it, and one graph replays 0.2 ms a step faster (about 18 µs a
boundary; `benchmarks/v4_speed_notes.md`, eighteenth session). The host needs no head start: the engine
launches a step while the GPU still runs the one before, and was found ahead of the GPU at 93 of 97
replays.

The layers' mHC mappings, compressors, indexers and routers run on side streams of the runner's
(`DecodeStep.side_streams`, `model/side_streams.py`), so a captured step is a graph with short branches
beside its chain.

Every graph of the runner, of every shape, shares one memory pool: they never run at the same time, and a
step's logits are copied out right after its replay, so the pool holds one step's scratch, not one per shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool
from deepscout.model_runtime.v4.engine.paged_cache import PagedSequenceCache
from deepscout.model_runtime.v4.engine.scheduler import Chunk
from deepscout.model_runtime.v4.engine.state_cache import StatePool
from deepscout.model_runtime.v4.model.decode_step import DecodeStep, LayerStorage
from deepscout.model_runtime.v4.model.side_streams import SideStreams
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import LayerKind


@dataclass(frozen=True)
class CarriedTokens:
    """Input tokens not on the host yet: `ids` (long, on the device) sampled by the previous step, and per
    chunk of this step the row of `ids` holding its input token (-1: the chunk's token is on the host)."""

    ids: torch.Tensor
    rows: list[int]


@dataclass
class _Graph:
    """A captured step and the static tensors it reads and writes."""

    graph: torch.cuda.CUDAGraph
    step: DecodeStep
    logits: torch.Tensor


class DecodeRunner:
    def __init__(
        self, model: DeepseekV4Model, kv: KVBlockPool, states: StatePool, *, cuda_graphs: bool
    ) -> None:
        self.model = model
        self.device = model.embed.weight.device
        self.storage = _layer_storage(model, kv, states)
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.side_streams = SideStreams.on(self.device)
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool: torch.cuda._POOL_HANDLE | None = None  # every graph's memory (made at the first capture)
        self.graph_replays = 0

    def handles(self, chunks: Sequence[Chunk]) -> bool:
        """Whether this step can run as a device decode step."""
        if self.model.kernels != "triton" or not chunks:
            return False
        return all(
            c.length == 1
            and c.sample
            and c.start >= len(c.seq.prompt)
            and not c.seq.request.return_prompt_logits
            for c in chunks
        )

    @torch.no_grad()
    def run(self, chunks: Sequence[Chunk], carried: CarriedTokens | None = None) -> torch.Tensor:
        """Float32 logits `[B, vocab]` for the chunks' sequences, whose caches then count the token."""
        storage = self.storage
        caches = [_cache(c) for c in chunks]
        width = bucket_width(max(len(c.block_table) for c in caches))
        step = self._inputs(chunks, caches, width, carried)
        key = (len(chunks), width)
        graph = self._graphs.get(key)
        if graph is not None:
            _copy_inputs(graph.step, step)
            graph.graph.replay()
            self.graph_replays += 1
            logits = graph.logits.clone()
        else:
            logits = self.model.decode(step, storage)
            if self.use_graphs:
                self._capture(key, step, storage)
        for cache in caches:
            cache.advance_decoded()
        return logits

    def release_graphs(self) -> None:
        """Drop every captured graph and their memory pool (the next step of a shape captures it again).
        Under expert parallelism this must come before the process group is destroyed: a live graph holding
        NCCL collectives makes NCCL's communicator teardown wait forever (pytorch/pytorch#115388)."""
        for graph in self._graphs.values():
            graph.graph.reset()
        self._graphs.clear()
        self._pool = None

    def _inputs(
        self,
        chunks: Sequence[Chunk],
        caches: list[PagedSequenceCache],
        width: int,
        carried: CarriedTokens | None,
    ) -> DecodeStep:
        rows = [-1] * len(chunks) if carried is None else carried.rows
        columns = []
        for c, cache, row in zip(chunks, caches, rows, strict=True):
            token = c.token_ids[0]
            if (token < 0) != (row >= 0):
                raise ValueError(f"chunk of {c.seq.request_id}: token {token} and carried row {row} disagree")
            columns.append([max(token, 0), c.start, cache.slot, row])
        host = torch.tensor(columns, dtype=torch.long).t().contiguous()
        if self.device.type == "cuda":
            host = host.pin_memory()
        token_ids, positions, slots, source = host.to(self.device, non_blocking=True)
        if carried is not None:
            token_ids = torch.where(source >= 0, carried.ids[source.clamp(min=0)], token_ids)
        tables = torch.zeros(len(chunks), width, dtype=torch.int32, device=self.device)
        for row, cache in enumerate(caches):
            table = cache.device_block_table(self.device)
            tables[row, : table.shape[0]] = table
        return DecodeStep(token_ids, positions, slots, tables, self.model.kernels, self.side_streams)

    def _capture(self, key: tuple[int, int], step: DecodeStep, storage: list[LayerStorage]) -> None:
        """Record the step for this shape (capture runs nothing, so the caches are not touched). Capture
        errors are this thread's only: under expert parallelism NCCL's watchdog thread polls its events
        during the capture, which the default (global) mode would turn into a failed capture."""
        static = DecodeStep(
            step.token_ids.clone(),
            step.positions.clone(),
            step.slots.clone(),
            step.block_tables.clone(),
            step.kernels,
            step.side_streams,
        )
        torch.cuda.synchronize(self.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            logits = self.model.decode(static, storage)
        self._graphs[key] = _Graph(graph, static, logits)


def _copy_inputs(static: DecodeStep, step: DecodeStep) -> None:
    static.token_ids.copy_(step.token_ids, non_blocking=True)
    static.positions.copy_(step.positions, non_blocking=True)
    static.slots.copy_(step.slots, non_blocking=True)
    static.block_tables.copy_(step.block_tables, non_blocking=True)


def _cache(chunk: Chunk) -> PagedSequenceCache:
    cache = chunk.seq.cache
    assert isinstance(cache, PagedSequenceCache) and cache.num_tokens == chunk.start
    return cache


def bucket_width(blocks: int) -> int:
    """The padded block-table width: `blocks` rounded up to a multiple of a sixteenth of the power of two at
    or above it (eight widths per doubling, at most 12.5% padding), and of 8 blocks (1K tokens: short
    contexts pad a little more rather than capture a graph every 128 tokens)."""
    step = max(1 << max(max(blocks - 1, 0).bit_length() - 4, 0), 8)
    return max(-(-blocks // step) * step, 1)


def _layer_storage(model: DeepseekV4Model, kv: KVBlockPool, states: StatePool) -> list[LayerStorage]:
    """Per layer, the state and entry tensors the decode step uses (entries in the pool's format)."""
    layers = []
    for i, kind in enumerate(model.args.layer_types):
        window_kv, window_pos, tails = states.layer_tensors(i)
        entries = {}
        if kind is not LayerKind.SLIDING:
            entries["main"] = kv.storage(i, "main").paged_keys()
        if kind is LayerKind.CSA:
            entries["indexer"] = kv.storage(i, "indexer").paged_keys()
        layers.append(LayerStorage(window_kv, window_pos, tails, entries))
    return layers
