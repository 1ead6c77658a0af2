"""Engine settings: KV storage format, pool sizes, scheduling and prefix-reuse knobs (validated)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: "float32" (exactness tests), "bfloat16", or "paper": FP8 e4m3 nope + BF16 rope main entries, FP8 or
#: FP4 (MXFP4) indexer keys, BF16 state.
KvDtype = Literal["float32", "bfloat16", "paper"]
IndexerFormat = Literal["fp8", "fp4"]
PoolPolicy = Literal["queue", "preempt"]
#: "mtp": speculative decoding with the model's MTP layer (see `mtp_speculation.py`; needs an MTP layer).
Speculative = Literal["off", "mtp"]


class EngineConfig(BaseModel):
    """How the engine stores KV and schedules work. Create it at start-up and pass it to `Engine`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kv_dtype: KvDtype = "float32"
    indexer_format: IndexerFormat = Field("fp4", description="indexer key format under kv_dtype='paper'")
    num_blocks: int = Field(1024, ge=1, description="paged blocks of compressed entries (128 tokens each)")
    num_state_slots: int = Field(
        8, ge=1, description="fixed-size per-sequence state slots (running+sessions)"
    )
    prefill_chunk: int = Field(512, ge=1, description="max prompt tokens of one sequence per step")
    max_tokens_per_step: int = Field(2048, ge=1, description="token budget of one forward (all sequences)")
    max_running: int = Field(8, ge=1, description="max sequences in one step")
    pool_policy: PoolPolicy = "preempt"
    prefix_caching: bool = True
    snapshot_every: int = Field(1, ge=1, description="snapshot the state every N block boundaries")
    snapshot_budget_bytes: int = Field(256 << 20, ge=0, description="memory for state snapshots (LRU)")
    max_idle_sessions: int = Field(4, ge=0, description="finished sessions kept (LRU) for their next turn")
    spill_dir: str | None = Field(None, description="write evicted idle sessions' KV here (on-disk cache)")
    device: str = "cpu"
    cuda_graphs: bool = Field(True, description="replay decode steps from CUDA graphs (fused kernels, GPU)")
    overlap: bool = Field(
        True,
        description="launch each device decode step before reading the previous one's tokens (the host's "
        "work hides behind the GPU's); False: read every step's tokens before the next step",
    )
    speculative: Speculative = Field(
        "off", description="'mtp': draft with the MTP layer, verify in one forward (no device decode steps)"
    )

    @model_validator(mode="after")
    def _check(self) -> EngineConfig:
        if self.max_running > self.num_state_slots:
            raise ValueError(
                f"max_running ({self.max_running}) needs as many state slots; raise num_state_slots"
            )
        return self
