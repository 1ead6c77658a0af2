"""Start expert-parallel DeepSeek-V4 on the devices of one machine and serve it from this process.

`launch` reads the model's arguments from its source (refusing a world size its routed experts do not
share out over, by `LaunchSpec.moe_sharding`), spawns one process per rank beyond the first
(torch.multiprocessing, "spawn"), and becomes rank 0 itself: every rank joins the process group through a
rendezvous file, loads its shard of the checkpoint (`CheckpointSource`) or draws its shard's random weights
(`RandomSource`) onto its device and builds the same engine; ranks 1.. then `follow` rank 0, and this
process returns the `LockstepEngine` serving `generate()` (inside `Launched`, whose `close` shuts the
ranks down and joins them).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from multiprocessing.context import SpawnProcess
from pathlib import Path

import torch
import torch.multiprocessing as mp

from deepscout.model_runtime.v4.engine import Engine, EngineConfig
from deepscout.model_runtime.v4.kernels.impl import KernelImpl, default_impl
from deepscout.model_runtime.v4.model.attention import AttnImpl
from deepscout.model_runtime.v4.model.moe import MoeSharding
from deepscout.model_runtime.v4.model.transformer import DeepseekV4Model
from deepscout.model_runtime.v4.model_config import ModelArgs, WeightFormat
from deepscout.model_runtime.v4.parallel.expert_sharding import (
    load_sharded_model,
    random_sharded_model,
    routed_share,
)
from deepscout.model_runtime.v4.parallel.lockstep_engine import LockstepEngine, follow
from deepscout.model_runtime.v4.parallel.rank_group import RankGroup
from deepscout.model_runtime.v4.weights.loader import backbone_args


@dataclass(frozen=True)
class CheckpointSource:
    """An official-format checkpoint directory: each rank reads its shard of it."""

    directory: Path

    def args(self) -> ModelArgs:
        return backbone_args(json.loads((self.directory / "config.json").read_text()))

    def load(
        self,
        group: RankGroup,
        *,
        dtype: torch.dtype,
        attn_impl: AttnImpl,
        weights: WeightFormat,
        moe_sharding: MoeSharding,
    ) -> DeepseekV4Model:
        model, _report = load_sharded_model(
            self.directory,
            group,
            dtype=dtype,
            attn_impl=attn_impl,
            weights=weights,
            moe_sharding=moe_sharding,
        )
        return model


@dataclass(frozen=True)
class RandomSource:
    """Random weights of the model `args` describes, drawn on each rank's device from `seed`."""

    model_args: ModelArgs
    seed: int = 0

    def args(self) -> ModelArgs:
        return self.model_args

    def load(
        self,
        group: RankGroup,
        *,
        dtype: torch.dtype,
        attn_impl: AttnImpl,
        weights: WeightFormat,
        moe_sharding: MoeSharding,
    ) -> DeepseekV4Model:
        return random_sharded_model(
            self.model_args,
            group,
            seed=self.seed,
            dtype=dtype,
            attn_impl=attn_impl,
            weights=weights,
            moe_sharding=moe_sharding,
        )


ModelSource = CheckpointSource | RandomSource


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a rank needs (picklable): where the weights come from, one device per rank (rank r on
    `devices[r]`; all CUDA or all CPU), how to load, share out (`moe_sharding`) and run the model, the
    engine settings (their device replaced by the rank's), the rendezvous file (not yet existing) and the
    collectives' timeout;
    `cpu_threads` caps each rank's intra-op threads (None: torch's default)."""

    source: ModelSource
    devices: tuple[str, ...]
    engine: EngineConfig
    rendezvous: Path
    dtype: torch.dtype = torch.float32
    weights: WeightFormat = "dense"
    moe_sharding: MoeSharding = "units"
    attn_impl: AttnImpl = "sparse"
    kernels: KernelImpl | None = None
    timeout_s: float = 600.0
    cpu_threads: int | None = None

    @property
    def world_size(self) -> int:
        return len(self.devices)


@dataclass
class Launched:
    """Rank 0's engine and the processes of the other ranks, given `timeout_s` to end once shut down."""

    engine: LockstepEngine
    processes: list[SpawnProcess] = field(default_factory=list)
    timeout_s: float = 600.0

    def close(self) -> None:
        """Shut every rank down: end the followers' loops, drop the captured graphs (each rank does), leave
        the process group with them, join them (a rank still alive after `timeout_s` is terminated and
        reported)."""
        self.engine.close()
        self.engine.engine.release_graphs()
        self.engine.group.leave(wait_for_peers=self._join)
        failed = [p.exitcode for p in self.processes if p.exitcode]
        if failed:
            raise RuntimeError(f"expert-parallel ranks exited with codes {failed}")

    def _join(self) -> None:
        for process in self.processes:
            process.join(self.timeout_s)
            if process.is_alive():
                process.terminate()
                process.join()

    def __enter__(self) -> Launched:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def launch(spec: LaunchSpec) -> Launched:
    """Start every rank of `spec` and return rank 0's engine (this process is rank 0)."""
    routed_share(
        spec.source.args(),
        moe_sharding=spec.moe_sharding,
        weights=spec.weights,
        rank=0,
        world_size=spec.world_size,
    )  # refuses a split that does not work before any rank starts
    if len({torch.device(d).type for d in spec.devices}) != 1:
        raise ValueError(f"the ranks' devices must be all CUDA or all CPU, got {list(spec.devices)}")
    context = mp.get_context("spawn")
    processes = [context.Process(target=_follower, args=(rank, spec)) for rank in range(1, spec.world_size)]
    for process in processes:
        process.start()
    try:
        return Launched(LockstepEngine(*_rank_engine(0, spec)), processes, spec.timeout_s)
    except BaseException:
        for process in processes:
            process.terminate()
            process.join()
        raise


def _rank_engine(rank: int, spec: LaunchSpec) -> tuple[Engine, RankGroup]:
    """Join the group as `rank`, load its shard and build its engine."""
    if spec.cpu_threads is not None:
        torch.set_num_threads(spec.cpu_threads)
    device = torch.device(spec.devices[rank])
    group = RankGroup.join(
        rank=rank,
        world_size=spec.world_size,
        device=device,
        rendezvous=spec.rendezvous,
        timeout_s=spec.timeout_s,
    )
    model = spec.source.load(
        group,
        dtype=spec.dtype,
        attn_impl=spec.attn_impl,
        weights=spec.weights,
        moe_sharding=spec.moe_sharding,
    )
    model.kernels = spec.kernels or default_impl(device)
    config = spec.engine.model_copy(update={"device": spec.devices[rank]})
    return Engine(model, config, agree_tokens=group.agree), group


def _follower(rank: int, spec: LaunchSpec) -> None:
    """A spawned rank's life: join, load, follow rank 0 until it closes, drop its graphs, leave, end. It
    ends the way a forked child does (`os._exit` once its output is flushed), not through the interpreter's
    finalisation, which can destroy the process group's worker threads in C++ destructors while still
    joinable and abort the rank ("terminate called without an active exception", seen on a loaded
    machine)."""
    engine, group = _rank_engine(rank, spec)
    follow(engine, group)
    engine.release_graphs()
    group.leave()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
