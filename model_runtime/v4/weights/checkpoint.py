"""A DeepSeek-V4 checkpoint directory: config.json plus its stored tensors, grouped into logical weights.

A logical weight is a stored tensor together with its block scale, when it has one. Official V4
checkpoints name the scale of ``P.weight`` ``P.scale``; V3-style checkpoints name it
``P.weight_scale_inv``. The weight's dtype says which format it is in (see :mod:`.quant`):
``float8_e4m3fn`` → FP8 with 128×128 blocks, int8/uint8/``float4_e2m1fn_x2`` → MXFP4 (32-element blocks);
anything else is stored plainly (BF16/F32 floats, I32/I64 for the hash-MoE ``tid2eid`` tables).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from deepscout.model_runtime.v4.weights.checkpoint_errors import (
    CheckpointError,
    CheckpointNotFoundError,
    TensorDtypeError,
    TensorShapeError,
    dtype_name,
)
from deepscout.model_runtime.v4.weights.checkpoint_variant import VariantDetection, detect_variant
from deepscout.model_runtime.v4.weights.quant import (
    FP4_BLOCK,
    FP4_STORAGE_DTYPES,
    SCALE_DTYPES,
    QuantFormat,
    QuantizedTensor,
    fp8_scale_shape,
)
from deepscout.model_runtime.v4.weights.safetensors_stream import ShardedSafetensors, TensorInfo

StoredFormat = Literal["plain", "fp8_block", "mxfp4"]
SCALE_SUFFIXES = (".scale", ".weight_scale_inv")
PLAIN_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
INTEGER_DTYPES = (torch.int32, torch.int64, torch.int16, torch.uint8, torch.int8)


@dataclass(frozen=True)
class StoredWeight:
    """One logical weight of the checkpoint: its data tensor and, if quantised, its block scale."""

    name: str
    data: TensorInfo
    scale: TensorInfo | None
    format: StoredFormat

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical (dequantised) shape."""
        if self.format == "mxfp4":
            rows, packed = self.data.shape
            return (rows, packed * 2)
        return self.data.shape

    @property
    def nbytes(self) -> int:
        """Bytes stored for this weight (data and scale)."""
        return self.data.nbytes + (self.scale.nbytes if self.scale is not None else 0)

    @property
    def is_floating(self) -> bool:
        return self.format != "plain" or self.data.dtype.is_floating_point


def _classify(data: TensorInfo, scale: TensorInfo | None) -> StoredWeight:
    name = data.name
    if data.dtype == torch.float8_e4m3fn:
        if scale is None:
            raise TensorDtypeError(
                name, "float8_e4m3fn", ["float8_e4m3fn with a block scale", "bfloat16", "float32"],
                why=f"an FP8 weight needs its block scale {name.removesuffix('.weight')}.scale",
            )  # fmt: skip
        fmt: StoredFormat = "fp8_block"
        expected_scale: tuple[int, ...] = fp8_scale_shape(data.shape) if len(data.shape) == 2 else ()
    elif scale is not None and data.dtype in FP4_STORAGE_DTYPES:
        fmt = "mxfp4"
        expected_scale = (data.shape[0], data.shape[1] * 2 // FP4_BLOCK) if len(data.shape) == 2 else ()
    elif scale is not None:
        raise TensorDtypeError(
            name, dtype_name(data.dtype), ["float8_e4m3fn (FP8)", "int8/uint8/float4_e2m1fn_x2 (MXFP4)"],
            why=f"it has a block scale {scale.name}, so it must be quantised",
        )  # fmt: skip
    else:
        if data.dtype not in PLAIN_FLOAT_DTYPES + INTEGER_DTYPES:
            expected = [dtype_name(d) for d in PLAIN_FLOAT_DTYPES]
            raise TensorDtypeError(name, dtype_name(data.dtype), expected)
        return StoredWeight(name=name, data=data, scale=None, format="plain")
    if len(data.shape) != 2:
        raise CheckpointError(f"quantised tensor {name!r} must be 2-D, got shape {list(data.shape)}")
    if scale.dtype not in SCALE_DTYPES:
        raise TensorDtypeError(scale.name, dtype_name(scale.dtype), [dtype_name(d) for d in SCALE_DTYPES])
    if fmt == "mxfp4" and (data.shape[1] * 2) % FP4_BLOCK:
        row = data.shape[1] * 2
        raise CheckpointError(f"MXFP4 tensor {name!r}: row length {row} is not a multiple of {FP4_BLOCK}")
    if scale.shape != expected_scale:
        raise TensorShapeError(scale.name, scale.shape, expected_scale)
    return StoredWeight(name=name, data=data, scale=scale, format=fmt)


def group_weights(tensors: ShardedSafetensors) -> dict[str, StoredWeight]:
    """Pair each ``P.weight`` with its ``P.scale``/``P.weight_scale_inv`` and classify every tensor."""
    scales: dict[str, TensorInfo] = {}
    for info in tensors.infos():
        for suffix in SCALE_SUFFIXES:
            base = info.name.removesuffix(suffix)
            if base != info.name and f"{base}.weight" in tensors:
                if base in scales:
                    raise CheckpointError(f"{base}.weight has two scales: {scales[base].name}, {info.name}")
                scales[base] = info
    scale_names = {s.name for s in scales.values()}
    weights: dict[str, StoredWeight] = {}
    for info in tensors.infos():
        if info.name in scale_names:
            continue
        base = info.name.removesuffix(".weight")
        scale = scales.get(base) if base != info.name else None
        weights[info.name] = _classify(info, scale)
    return dict(sorted(weights.items()))


class Checkpoint:
    """A checkpoint directory opened for streaming: config.json, its variant (an unsupported one is refused
    before any shard is opened), and the logical weights read one by one."""

    def __init__(self, directory: str | Path, *, release_after_bytes: int = 64 << 20) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointNotFoundError(f"checkpoint directory {self.directory} does not exist")
        config_path = self.directory / "config.json"
        if not config_path.is_file():
            raise CheckpointNotFoundError(
                f"no config.json in {self.directory}; a DeepSeek-V4 checkpoint directory holds config.json "
                "beside its safetensors shards"
            )
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from exc
        self.variant: VariantDetection = detect_variant(self.config)
        self.tensors = ShardedSafetensors(self.directory, release_after_bytes=release_after_bytes)
        self.weights = group_weights(self.tensors)

    def read_stored(self, name: str) -> torch.Tensor | QuantizedTensor:
        """The weight as stored: a plain tensor or a :class:`QuantizedTensor` (views of the mapping)."""
        weight = self.weights[name]
        data = self.tensors.read(weight.data.name)
        if weight.scale is None:
            return data
        scale = self.tensors.read(weight.scale.name)
        fmt: QuantFormat = "fp8_block" if weight.format == "fp8_block" else "mxfp4"
        return QuantizedTensor(format=fmt, data=data, scale=scale, shape=weight.shape)

    def close(self) -> None:
        self.tensors.close()
