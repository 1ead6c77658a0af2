"""Read the tensors of a directory of safetensors shards one at a time, through mmap.

``safe_open`` maps a shard and hands out tensors that are views of the mapping (no copy). Pages touched
through a mapping stay resident (and count in the process RSS) until the mapping is closed, so a reader
that kept every shard open would grow by a whole shard while loading it. :class:`ShardedSafetensors`
therefore closes a shard's mapping once ``release_after_bytes`` have been read through it (0: after
every tensor); a tensor already handed out keeps its own reference to the mapping until it is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from deepscout.model_runtime.v4.weights.checkpoint_errors import (
    CheckpointError,
    CheckpointNotFoundError,
    MissingShardError,
)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

#: safetensors dtype codes → torch dtypes (F4 holds two e2m1 values per byte).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E8M0": torch.float8_e8m0fnu,
    "F4": torch.float4_e2m1fn_x2,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where a stored tensor lives and what it is, read from the shard header only."""

    name: str
    shard: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


class _OpenShard:
    def __init__(self, path: Path) -> None:
        self.handle: Any = safe_open(str(path), framework="pt", device="cpu")
        self.bytes_read = 0


class ShardedSafetensors:
    """The tensors of a checkpoint directory (index json + shards, or a single ``model.safetensors``)."""

    def __init__(self, directory: str | Path, *, release_after_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        self.release_after_bytes = release_after_bytes
        if not self.directory.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist")
        weight_map = self._weight_map()
        self._infos: dict[str, TensorInfo] = {}
        for shard in sorted(set(weight_map.values())):
            self._infos.update(self._read_header(shard, [n for n, s in weight_map.items() if s == shard]))
        self._open: dict[str, _OpenShard] = {}

    # ------------------------------------------------------------------ discovery
    def _weight_map(self) -> dict[str, str]:
        index = self.directory / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a safetensors index (no 'weight_map'): {exc}") from exc
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has an empty or malformed 'weight_map'")
            by_shard: dict[str, list[str]] = {}
            for name, shard in weight_map.items():
                by_shard.setdefault(shard, []).append(name)
            for shard, names in sorted(by_shard.items()):
                if not (self.directory / shard).is_file():
                    raise MissingShardError(shard, self.directory, sorted(names))
            return dict(weight_map)
        shards = sorted(p.name for p in self.directory.glob("*.safetensors"))
        if not shards:
            raise CheckpointNotFoundError(
                f"no {INDEX_FILE} and no *.safetensors files in {self.directory}; "
                "point at a directory holding the checkpoint's safetensors shards"
            )
        weight_map = {}
        for shard in shards:
            with safe_open(str(self.directory / shard), framework="pt") as handle:
                stored = handle.keys()
                for name in stored:
                    if name in weight_map:
                        raise CheckpointError(f"tensor {name!r} is in both {weight_map[name]} and {shard}")
                    weight_map[name] = shard
        return weight_map

    def _read_header(self, shard: str, expected: list[str]) -> dict[str, TensorInfo]:
        path = self.directory / shard
        infos: dict[str, TensorInfo] = {}
        try:
            opened: Any = safe_open(str(path), framework="pt")
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise CheckpointError(f"shard {shard!r} in {self.directory} is not safetensors: {exc}") from exc
        with opened as handle:
            stored = set(handle.keys())
            for name in expected:
                infos[name] = self._describe(handle, stored, shard, name)
        return infos

    def _describe(self, handle: Any, stored: set[str], shard: str, name: str) -> TensorInfo:
        if name not in stored:
            raise CheckpointError(
                f"the index puts tensor {name!r} in shard {shard!r}, which does not hold it; "
                "the index and the shards come from different downloads"
            )
        view = handle.get_slice(name)
        code = view.get_dtype()
        if code not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"tensor {name!r} in {shard!r} has unsupported dtype {code}")
        shape = tuple(int(s) for s in view.get_shape())
        if code == "F4":  # the header counts fp4 elements; torch holds two per element
            shape = (*shape[:-1], shape[-1] // 2)
        return TensorInfo(name=name, shard=shard, dtype=SAFETENSORS_DTYPES[code], shape=shape)

    # ------------------------------------------------------------------ access
    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"tensor {name!r} is not in the checkpoint at {self.directory}") from None

    def infos(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    def read(self, name: str) -> torch.Tensor:
        """The stored tensor, as a view of the shard's mapping (no copy); drop it once consumed."""
        info = self.info(name)
        shard = self._open.get(info.shard)
        if shard is None:
            shard = self._open[info.shard] = _OpenShard(self.directory / info.shard)
        tensor: torch.Tensor = shard.handle.get_tensor(name)
        shard.bytes_read += info.nbytes
        if shard.bytes_read >= self.release_after_bytes:
            del self._open[info.shard]
        return tensor

    def close(self) -> None:
        """Close every open mapping (tensors still held keep theirs alive)."""
        self._open.clear()
