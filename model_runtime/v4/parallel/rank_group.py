"""One rank of an expert-parallel process group: its rank, the world size, its device and the backend.

The facts are decided at the entry point and passed down explicitly (nothing below reads the environment
or a global). The backend follows the device: NCCL on CUDA, gloo on CPU; the same code runs on both. When
the ranks share whole experts, rank `r` of `W` holds the routed experts `[r*E/W, (r+1)*E/W)` of every MoE
layer (`expert_slice`), which needs `E` divisible by `W`.

Control messages (rank 0's step orders, the tokens it sampled) travel through a gloo group on the CPUs,
never through NCCL: an object collective on NCCL copies its bytes through the device and makes every
receiver wait for its stream (a host sync), twice a message, four times a decode step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Literal, cast

import torch
import torch.distributed as dist

from deepscout.model_runtime.v4.kernels.expert_weights import ExpertSlice

Backend = Literal["nccl", "gloo"]


def backend_for(device: torch.device) -> Backend:
    """NCCL for CUDA devices, gloo for CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def expert_slice(n_experts: int, *, rank: int, world_size: int) -> ExpertSlice:
    """The routed experts rank `rank` of `world_size` holds: an equal contiguous share."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not within a world of {world_size}")
    if n_experts % world_size:
        raise ValueError(
            f"expert parallelism needs n_routed_experts ({n_experts}) divisible by the world size "
            f"({world_size})"
        )
    count = n_experts // world_size
    return ExpertSlice(rank * count, count)


@dataclass(frozen=True)
class RankGroup:
    """This process's place in the (default) process group, once `join`ed; `control` is the CPU group the
    control messages travel through (None: the default group, which is then gloo)."""

    rank: int
    world_size: int
    device: torch.device
    backend: Backend
    control: dist.ProcessGroup | None = None

    @classmethod
    def join(
        cls, *, rank: int, world_size: int, device: torch.device, rendezvous: Path, timeout_s: float
    ) -> RankGroup:
        """Join the process group through the file `rendezvous` (all ranks name the same, not yet existing
        file); blocks until every rank has joined."""
        backend = backend_for(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL and its object collectives use the current device
        dist.init_process_group(
            backend,
            init_method=rendezvous.resolve().as_uri(),
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
        control = None
        if backend != "gloo":
            control = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        return cls(rank, world_size, device, backend, control)

    def leave(self, *, wait_for_peers: Callable[[], None] | None = None) -> None:
        """Tear the process group down: every rank calls it, and it returns once all have. Rank 0 passes
        `wait_for_peers` (returns once the other ranks' processes have ended). On gloo it runs before this
        rank closes its side, as a rank whose peer closes the connections while it is still tearing down
        aborts; on NCCL after, as every rank's communicator is destroyed together (waiting first would
        deadlock)."""
        dist.barrier()  # no rank tears its connections down while another still uses them
        if wait_for_peers is not None and self.backend == "gloo":
            wait_for_peers()
        dist.destroy_process_group()
        if wait_for_peers is not None and self.backend == "nccl":
            wait_for_peers()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place (every rank gets the same sum); returns it."""
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_columns(self, tensor: torch.Tensor) -> torch.Tensor:
        """The ranks' `[..., C]` tensors side by side, `[..., world_size·C]` in rank order, on every rank."""
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=-1)

    def agree(self, tokens: list[int]) -> list[int]:
        """Rank 0's `tokens` on every rank (each rank passes the tokens it sampled)."""
        return cast(list[int], self.broadcast(tokens if self.rank == 0 else None))

    def broadcast(self, message: object) -> object:
        """Rank 0's `message` on every rank (pickled, sent through the control group; others pass None)."""
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.control, device=torch.device("cpu"))
        return box[0]
