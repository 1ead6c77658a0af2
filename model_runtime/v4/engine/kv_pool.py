"""The tensors behind the paged blocks: compressed entries of every CSA/HCA layer, in a storage format.

Block `b` holds, for each CSA layer, main entries `[32, head_dim]` and indexer keys `[32, index_head_dim]`,
and for each HCA layer one main entry `[1, head_dim]` (with m=4, m'=128: one block = 128 source tokens).
Each (layer, compressor) has its own preallocated `[num_blocks, entries_per_block, ...]` storage.

Storage formats (`EngineConfig.kv_dtype`): * "float32" / "bfloat16": plain rows. * "paper": main entries as
FP8 e4m3 nope dims + BF16 rope dims (head_dim 512, rope 64: 448 + 128 = 576 B), indexer keys FP8 e4m3 or MXFP4
(e2m1 pairs + one e8m0 scale per 32 values: 68 B for 128 dims). Entries are RMS-normalised by the compressor,
so FP8 needs no scale (|x| stays far inside e4m3's ±448). Writes quantise on the storage's device; reads
return bfloat16 for the quantised formats (both through `kernels/paged_keys.py`). Kernels read the stored
bytes directly through `EntryStorage.paged_keys()`. Storage is allocated uninitialised (`torch.empty`): only
entries already written are ever read, and on the CPU pages become resident as blocks fill."""

from __future__ import annotations

import math

import torch

from deepscout.errors import DeepscoutError
from deepscout.model_runtime.v4.cache.protocol import CompressorName
from deepscout.model_runtime.v4.engine.engine_config import IndexerFormat, KvDtype
from deepscout.model_runtime.v4.kernels.paged_keys import PagedKeys
from deepscout.model_runtime.v4.model_config import LayerKind, ModelArgs
from deepscout.model_runtime.v4.weights.quant import FP4_BLOCK


class KvFormatError(DeepscoutError, ValueError):
    """A storage format that does not fit the model's shapes (the message names the fix)."""


class EntryStorage:
    """Preallocated `[num_blocks, per_block, dim]` rows in some format; addressed by (block, offset). The
    subclasses allocate; the format's read and quantising write are the `PagedKeys` they hold."""

    def __init__(self, keys: PagedKeys) -> None:
        self.keys = keys
        self.dim = keys.dim

    def paged_keys(self) -> PagedKeys:
        """The stored tensors as the kernels read them (and as `read`/`write` address them)."""
        return self.keys

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.keys.tensors

    def write(self, blocks: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor) -> None:
        """Store `rows` `[n, dim]` at (`blocks[i]`, `offsets[i]`), quantised on the storage's device."""
        self.keys.write(blocks, offsets, rows)

    def read(self, blocks: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Rows at (`blocks`, `offsets`) (any equal shapes `[...]`) as `[..., dim]`."""
        return self.keys.read(blocks, offsets)

    @property
    def nbytes(self) -> int:
        """Bytes actually allocated (storage sizes of the tensors)."""
        return sum(t.untyped_storage().nbytes() for t in self.tensors)


class PlainStorage(EntryStorage):
    def __init__(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__(PagedKeys("plain", torch.empty(shape, dtype=dtype, device=device)))


class Fp8RopeStorage(EntryStorage):
    """FP8 e4m3 for the leading (nope) dims, BF16 for the trailing `rope_dim` dims."""

    def __init__(self, shape: tuple[int, int, int], rope_dim: int, device: torch.device) -> None:
        blocks, per_block, dim = shape
        nope = torch.empty(blocks, per_block, dim - rope_dim, dtype=torch.float8_e4m3fn, device=device)
        rope = torch.empty(blocks, per_block, rope_dim, dtype=torch.bfloat16, device=device)
        super().__init__(PagedKeys("fp8_rope", nope, rope=rope))


class Fp8Storage(EntryStorage):
    """Whole rows in FP8 e4m3 (no scale: the rows are RMS-normalised)."""

    def __init__(self, shape: tuple[int, int, int], device: torch.device) -> None:
        super().__init__(PagedKeys("fp8", torch.empty(shape, dtype=torch.float8_e4m3fn, device=device)))


class Mxfp4Storage(EntryStorage):
    """MXFP4 rows: two e2m1 codes per byte, one power-of-two (e8m0) scale per 32 values."""

    def __init__(self, shape: tuple[int, int, int], device: torch.device) -> None:
        blocks, per_block, dim = shape
        if dim % FP4_BLOCK:
            raise KvFormatError(
                f"FP4 indexer keys need index_head_dim % {FP4_BLOCK} == 0 (got {dim}); "
                "use indexer_format='fp8'"
            )
        packed = torch.empty(blocks, per_block, dim // 2, dtype=torch.uint8, device=device)
        scale = torch.empty(blocks, per_block, dim // FP4_BLOCK, dtype=torch.uint8, device=device)
        super().__init__(PagedKeys("mxfp4", packed, scale))


def block_tokens(args: ModelArgs) -> int:
    """Source tokens per block: lcm of the CSA and HCA ratios (128 for V4)."""
    return math.lcm(args.csa_ratio, args.hca_ratio)


class KVBlockPool:
    """Storage for `num_blocks` blocks across the model's main attention layers (MTP layers excluded)."""

    def __init__(
        self,
        args: ModelArgs,
        num_blocks: int,
        kv_dtype: KvDtype = "float32",
        indexer_format: IndexerFormat = "fp4",
        device: torch.device | str = "cpu",
    ) -> None:
        self.args = args
        self.num_blocks = num_blocks
        self.kv_dtype = kv_dtype
        self.block_tokens = block_tokens(args)
        dev = torch.device(device)
        self.device = dev
        self.layer_kinds = args.layer_types
        self._stores: list[dict[str, EntryStorage]] = []
        for kind in self.layer_kinds:
            stores: dict[str, EntryStorage] = {}
            if kind is not LayerKind.SLIDING:
                per_block = self.entries_per_block(kind)
                stores["main"] = self._main_storage((num_blocks, per_block, args.head_dim), dev)
            if kind is LayerKind.CSA:
                shape = (num_blocks, self.entries_per_block(kind), args.index_head_dim)
                stores["indexer"] = self._indexer_storage(shape, indexer_format, dev)
            self._stores.append(stores)

    def _main_storage(self, shape: tuple[int, int, int], device: torch.device) -> EntryStorage:
        if self.kv_dtype == "paper":
            return Fp8RopeStorage(shape, self.args.qk_rope_head_dim, device)
        return PlainStorage(shape, _plain_dtype(self.kv_dtype), device)

    def _indexer_storage(
        self, shape: tuple[int, int, int], fmt: IndexerFormat, device: torch.device
    ) -> EntryStorage:
        if self.kv_dtype != "paper":
            return PlainStorage(shape, _plain_dtype(self.kv_dtype), device)
        return Mxfp4Storage(shape, device) if fmt == "fp4" else Fp8Storage(shape, device)

    def entries_per_block(self, kind: LayerKind) -> int:
        return self.block_tokens // self.args.ratio(kind)

    def storage(self, layer: int, name: CompressorName) -> EntryStorage:
        try:
            return self._stores[layer][name]
        except (IndexError, KeyError):
            kind = self.layer_kinds[layer].value if layer < len(self.layer_kinds) else "missing"
            raise KvFormatError(f"layer {layer} ({kind}) has no paged {name!r} entries") from None

    def tensors(self) -> list[torch.Tensor]:
        """Every storage tensor (first dim = block id), in a fixed order."""
        return [t for stores in self._stores for store in stores.values() for t in store.tensors]

    def nbytes_by_kind(self) -> dict[str, int]:
        """Allocated bytes per layer kind and compressor, e.g. {"csa.main": ..., "csa.indexer": ...}."""
        out: dict[str, int] = {}
        for kind, stores in zip(self.layer_kinds, self._stores, strict=True):
            for name, store in stores.items():
                label = f"{_SHORT[kind]}.{name}"
                out[label] = out.get(label, 0) + store.nbytes
        return out

    @property
    def nbytes(self) -> int:
        return sum(self.nbytes_by_kind().values())


_SHORT = {LayerKind.SLIDING: "sliding", LayerKind.CSA: "csa", LayerKind.HCA: "hca"}


def _plain_dtype(kv_dtype: KvDtype) -> torch.dtype:
    return torch.float32 if kv_dtype == "float32" else torch.bfloat16


def state_dtype(kv_dtype: KvDtype) -> torch.dtype:
    """The dtype of the per-sequence state (window ring, compressor tails)."""
    return torch.float32 if kv_dtype == "float32" else torch.bfloat16
