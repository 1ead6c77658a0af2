"""DeepSeek-V4 inference engine over a heterogeneous paged KV cache (see `engine.py` for the API)."""

from deepscout.model_runtime.v4.engine.engine import CapacityError, Engine, UnknownRequestError
from deepscout.model_runtime.v4.engine.engine_config import EngineConfig
from deepscout.model_runtime.v4.engine.request import (
    FinishReason,
    GenerationRequest,
    RequestError,
    RequestOutput,
    SamplingParams,
)

__all__ = [
    "CapacityError",
    "Engine",
    "EngineConfig",
    "FinishReason",
    "GenerationRequest",
    "RequestError",
    "RequestOutput",
    "SamplingParams",
    "UnknownRequestError",
]
