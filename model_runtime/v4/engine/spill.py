"""On-disk KV for idle sessions (the paper's on-disk cache, per session).

When an idle session is evicted from memory, its full compressed blocks (raw storage bytes, any format)
and the state checkpoint at its last snapshot boundary are written to `<dir>/<session>.pt`. The session's
next turn loads them into fresh blocks and a fresh state slot, so only the tokens after that boundary
are recomputed: the sliding-window state comes back from the periodic checkpoint, not from recomputation.
Files hold tensors, lists and ints only and are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepscout.model_runtime.v4.cache.protocol import CompressorTail
from deepscout.model_runtime.v4.engine.kv_pool import KVBlockPool
from deepscout.model_runtime.v4.engine.state_cache import LayerSnapshot, StateSnapshot


@dataclass(frozen=True)
class SpilledSession:
    tokens: list[int]  # the tokens the blocks and checkpoint cover (a whole number of blocks)
    blocks: list[torch.Tensor]  # per pool tensor: that tensor's rows of the spilled blocks, in order
    snapshot: StateSnapshot


class SessionSpill:
    def __init__(self, directory: str | Path, kv: KVBlockPool) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kv = kv
        self.writes = 0
        self.reads = 0

    def path_for(self, session_id: str) -> Path:
        return self.directory / f"{hashlib.sha256(session_id.encode()).hexdigest()[:32]}.pt"

    def save(self, session_id: str, tokens: list[int], blocks: list[int], snapshot: StateSnapshot) -> None:
        """Write the first len(blocks) blocks and the checkpoint taken at their end."""
        index = torch.tensor(blocks, dtype=torch.long, device=self.kv.device)
        payload = {
            "tokens": tokens,
            "blocks": [t[index].cpu() for t in self.kv.tensors()],
            "snapshot": _snapshot_to_dict(snapshot),
        }
        torch.save(payload, self.path_for(session_id))
        self.writes += 1

    def peek(self, session_id: str) -> SpilledSession | None:
        path = self.path_for(session_id)
        if not path.is_file():
            return None
        payload = torch.load(path, weights_only=True)
        self.reads += 1
        return SpilledSession(payload["tokens"], payload["blocks"], _snapshot_from_dict(payload["snapshot"]))

    def load_blocks(self, spilled: SpilledSession, count: int, into: list[int]) -> None:
        """Copy the first `count` spilled blocks into pool blocks `into`."""
        index = torch.tensor(into, dtype=torch.long, device=self.kv.device)
        for tensor, rows in zip(self.kv.tensors(), spilled.blocks, strict=True):
            tensor[index] = rows[:count].to(tensor.device)

    def discard(self, session_id: str) -> None:
        self.path_for(session_id).unlink(missing_ok=True)


def _snapshot_to_dict(snapshot: StateSnapshot) -> dict[str, Any]:
    layers = []
    for layer in snapshot.layers:
        tails = {
            name: None
            if tail is None
            else {
                "kv": tail.kv.cpu(),
                "gate": tail.gate.cpu(),
                "overlap_kv": None if tail.overlap_kv is None else tail.overlap_kv.cpu(),
                "overlap_gate": None if tail.overlap_gate is None else tail.overlap_gate.cpu(),
            }
            for name, tail in layer.tails.items()
        }
        layers.append(
            {"window_kv": layer.window_kv.cpu(), "window_pos": layer.window_pos.cpu(), "tails": tails}
        )
    return {"num_tokens": snapshot.num_tokens, "layers": layers}


def _snapshot_from_dict(data: dict[str, Any]) -> StateSnapshot:
    layers = []
    for layer in data["layers"]:
        tails = {name: None if t is None else CompressorTail(**t) for name, t in layer["tails"].items()}
        layers.append(LayerSnapshot(layer["window_kv"], layer["window_pos"], tails))
    return StateSnapshot(int(data["num_tokens"]), tuple(layers))
