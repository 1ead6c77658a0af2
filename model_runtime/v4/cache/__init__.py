"""Per-sequence KV cache for DeepSeek-V4: the protocol the model uses, and a contiguous reference."""

from deepscout.model_runtime.v4.cache.contiguous import ContiguousLayerCache, ContiguousSequenceCache
from deepscout.model_runtime.v4.cache.protocol import (
    CompressorName,
    CompressorTail,
    CompressorTrail,
    LayerCache,
    LayerKind,
    SequenceCache,
    WindowView,
)

__all__ = [
    "CompressorName",
    "CompressorTail",
    "CompressorTrail",
    "ContiguousLayerCache",
    "ContiguousSequenceCache",
    "LayerCache",
    "LayerKind",
    "SequenceCache",
    "WindowView",
]
